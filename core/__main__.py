"""Command line: python -m core {demo,models,embed,predict,evaluate,score,compare,ensemble,report,export,audit} — options from the config dataclasses, one-line errors, never a traceback."""

from __future__ import annotations

# Only built-in modules load before main's try: every other import happens inside it, so a Ctrl-C
# during start-up is an interruption like any other, not a traceback.
import signal
import sys
import time

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Interrupt:
    """Whether Ctrl-C was pressed, whatever became of the KeyboardInterrupt it raised.

    A library can turn it into an error of its own (a compiled module interrupted in its init raises
    ImportError "initialization failed") or swallow it (a broad except in an import): the flag still
    says so, and the run ends as interrupted.
    """

    received = False

    @classmethod
    def handle(cls, signum, frame) -> None:
        cls.received = True
        signal.default_int_handler(signum, frame)

    @classmethod
    def raise_if_received(cls) -> None:
        if cls.received:
            raise KeyboardInterrupt


class ProgressBar:
    """A one-line progress bar with images/s and ETA on stderr."""

    unfinished: ProgressBar | None = None  # the bar whose line is not ended yet

    def __init__(self, label: str, stream=None, width: int = 28):
        # sys.stderr of the moment, not of the import: whoever replaced it since (a test's capture) gets the bar.
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.started = time.perf_counter()

    @classmethod
    def end_unfinished_line(cls) -> None:
        """End a bar's line left half-way, so what is printed next starts a line of its own."""
        if cls.unfinished is not None:
            cls.unfinished.stream.write("\n")
            cls.unfinished.stream.flush()
            cls.unfinished = None

    def __call__(self, done: int, total: int, images_per_second: float | None = None) -> None:
        Interrupt.raise_if_received()  # a Ctrl-C a library swallowed stops the work at its next step
        share = done / total if total else 1.0
        filled = int(share * self.width)
        rate = f"{images_per_second:6.1f} images/s" if images_per_second else ""
        eta = ""
        if images_per_second and done < total:
            eta = f"  ETA {(total - done) / images_per_second:5.0f}s"
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {rate}{eta}")
        ProgressBar.unfinished = self
        if done >= total:
            self.stream.write(f"  ({time.perf_counter() - self.started:.1f}s)\n")
            ProgressBar.unfinished = None
        self.stream.flush()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"note: {message}", file=sys.stderr)


def _load(args, source=None, model=None):
    """Embeddings for the command's source, reporting what was refused."""
    from core.analysis.loading import is_embeddings_file, load_embeddings
    from core.embedding.cache import EmbeddingCache
    from core.embedding.config import EmbedConfig
    from core.io.parts import incomplete_note

    source = _selected_source(args, source)
    embed_config = None
    if not is_embeddings_file(source):
        embed_config = _config(EmbedConfig, args, model=model or args.model)
    elif note := incomplete_note(source):
        print(f"note: {note}", file=sys.stderr)
    loaded = load_embeddings(
        source, embed_config, EmbeddingCache(), ProgressBar("embedding"), watch=_stage_bars()
    )
    _tell_embedding(len(loaded.embeddings.ids), loaded)
    return loaded


def _selected_source(args, source=None) -> str:
    """The command's source spelled with its Hugging Face split and column options (other sources unchanged)."""
    from core.io.hf_datasets import HfSelection, selected_source

    return selected_source(source or args.source, _config(HfSelection, args))


def _stage_bars():
    """A Watch drawing one progress bar per stage, as a Hugging Face dataset's images are written split by split."""
    from core.progress import Watch

    bars = {}
    return Watch(
        report=lambda done, total, stage: bars.setdefault(stage, ProgressBar(stage))(done, total)
    )


def _tell_embedding(accepted: int, run) -> None:
    """On stderr: how many vectors came and from where, the precision, and every refused file (a LoadedEmbeddings or ParquetRun)."""
    print(f"{accepted} accepted, {len(run.rejected)} rejected", file=sys.stderr)
    if run.precision_note:
        print(run.precision_note, file=sys.stderr)
    if run.computed or run.from_cache:
        print(f"computed {run.computed}, from cache {run.from_cache}", file=sys.stderr)
    for rejected in run.rejected:
        print(f"  rejected {rejected.name}: {rejected.reason}", file=sys.stderr)


def _config(config_class, args, **given):
    """The config built from the options _add_config_options made for it, with `given` fields set directly."""
    from dataclasses import fields

    return config_class(
        **{
            field.name: getattr(args, field.name)
            for field in fields(config_class)
            if hasattr(args, field.name)
        }
        | given
    )


def _predict_config(args):
    from core.prediction.config import PredictConfig

    return _config(PredictConfig, args)


def _flags(analysis, args):
    from core.detection.distractors import DbscanConfig

    if args.detector == "dbscan":
        return analysis.dbscan(_config(DbscanConfig, args))
    return analysis.flags()


def _checked_out(out: str, sources, *, folder: bool = False, writes=()):
    """The --out path, checked against what the command reads, with the folder it writes into made.

    A file --out (the default) must be new or a regular file; a `folder` --out must be new or a
    folder, and `writes` names the files the command puts in it. Refused, with one line naming the
    user's own paths: a file written that is one of the inputs under any name (a hard link is the same
    file), and an --out inside a dataset folder that the command reads, whose files would join the
    dataset when it is next read. Returns a file's Path, or a folder as the user spelled it, expanded
    (a trailing "/" tells embed a folder from a file).
    """
    import os
    import stat
    from pathlib import Path

    path = Path(out).expanduser()
    where = path.resolve()
    for dataset_folder, shown in _dataset_folders(sources):
        if where == dataset_folder or dataset_folder in where.parents:
            raise ValueError(
                f"--out {out} is inside the dataset folder {shown}, which the command reads, so what it writes "
                "would join the dataset; write outside it"
            )
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder to write into")
    for target in [path / name for name in writes] if folder else [path]:
        try:
            mode = os.stat(target).st_mode
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ValueError(f"--out {out} cannot be used: {error.strerror}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"--out {out} is not a regular file; give the path of a file to write"
                if target == path
                else f"--out {out} holds a {target.name} that is not a regular file; give another folder"
            )
        named = "" if target == path else f"'s {target.name}"
        # The same inode under any name: writing would replace the input before (or while) it is read.
        for source in sources:
            if os.path.isfile(source) and os.path.samefile(target, source):
                raise ValueError(
                    f"--out {out}{named} is the input {source}; write to another "
                    + ("folder" if folder else "file")
                )
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot make the folder for --out {out}: {error.strerror}") from None
    return os.path.expanduser(out) if folder else path


def _dataset_folders(sources):
    """Each folder a source reads as its dataset, resolved, with the user's spelling of it: a folder source
    (images, part files, a save_to_disk folder) and the folder of a train.csv, whose rows name images beside it."""
    from pathlib import Path

    from core.io.hf_datasets import is_hf_source, parse_source

    for source in sources:
        location = Path(parse_source(str(source))[0] if is_hf_source(source) else source)
        if location.is_dir():
            yield location.resolve(), location
        elif location.is_file() and location.suffix.lower() == ".csv":
            yield location.parent.resolve(), location.parent


def cmd_demo(args) -> int:
    from pathlib import Path

    from core.io.demo import write_demo_dataset, write_digits_dataset

    root = (write_digits_dataset if args.digits else write_demo_dataset)(
        Path(args.out_dir), seed=args.seed
    )
    print(f"wrote {'digits' if args.digits else 'demo'} dataset to {root}")
    return 0


def cmd_models(args) -> int:
    from core.embedding.config import list_models

    for name, description in list_models().items():
        print(f"{name:40s} {description}")
    print("\nAny Hugging Face CLIP id or local checkpoint directory also works.")
    return 0


def cmd_embed(args) -> int:
    from contextlib import nullcontext

    from core.embedding.cache import EmbeddingCache
    from core.embedding.config import EmbedConfig
    from core.embedding.ray_engine import EngineConfig, embed_on_ray, joined_ray, refuse_file_out
    from core.embedding.runner import embed_to_parquet, is_folder_out
    from core.io.layouts import load_dataset

    engine = _config(EngineConfig, args)
    folder = is_folder_out(args.out)
    if engine.engine == "ray":
        refuse_file_out(args.out)  # before the dataset is read
    out = _checked_out(args.out, [args.source], folder=folder)
    config, bar = _config(EmbedConfig, args), ProgressBar("embedding")
    # Ray before the dataset is read: a cluster that cannot be joined is told in seconds, however large the dataset.
    with joined_ray(engine) if engine.engine == "ray" else nullcontext():
        dataset = load_dataset(_selected_source(args), watch=_stage_bars())
        if engine.engine == "ray":
            run = embed_on_ray(dataset, config, out, engine, bar, args.rows_per_part)
        else:
            run = embed_to_parquet(dataset, config, out, EmbeddingCache(), bar, args.rows_per_part)
    _tell_embedding(run.written, run)
    already = f"; {run.already} already there, {run.already + run.written} in all" if folder else ""
    print(f"wrote {run.written} vectors ({run.model}) to {args.out}{already}")
    return 0


def cmd_predict(args) -> int:
    from core.analysis.pipeline import analyse
    from core.prediction.predict import write_submission

    out = _checked_out(args.out, [args.source])
    config = _predict_config(args)  # bad options are refused before the dataset is read
    analysis = analyse(_load(args).embeddings, config)
    flags = _flags(analysis, args)
    write_submission(out, list(analysis.test.ids), analysis.predictions(flags=flags))
    for note in analysis.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.detector == "dbscan":
        print(f"detector: DBSCAN (eps {args.eps}, min_samples {args.min_samples})")
    else:
        print(f"threshold: {analysis.threshold:.4f} ({analysis.threshold_source})")
    print(f"flagged as distractors: {int(flags.sum())} of {len(flags)} ({flags.mean():.1%})")
    if figures := analysis.without_truth(flags=flags):
        print(f"without the answers: {figures}")
    print(f"wrote {args.out}")
    return 0


def _format_report(report: dict) -> str:
    width = max(map(len, report))
    lines = []
    for key, value in report.items():
        if value is None:
            shown = "n/a"
        elif isinstance(value, float):
            shown = f"{value:.6f}"
        elif isinstance(value, tuple):  # an interval
            shown = "–".join(f"{end:.6f}" for end in value)
        else:
            shown = str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    import json

    from core.analysis.pipeline import analyse
    from core.io.layouts import missing_test_truth
    from core.records import TEST

    config = _predict_config(args)  # bad options are refused before the dataset is read
    loaded = _load(args)
    analysis = analyse(loaded.embeddings, config)
    if analysis.truth is None:
        test_labels = loaded.embeddings.labels[loaded.embeddings.mask(TEST)]
        raise ValueError(
            f"evaluate needs test truth: {missing_test_truth(_selected_source(args), test_labels)}; "
            "use predict for unlabelled test sets"
        )
    report = {"model": loaded.embeddings.model, "threshold_rule": analysis.threshold_source}
    report.update(analysis.report(flags=_flags(analysis, args)).as_dict())
    best_threshold, best_map = analysis.sweep.best_map_threshold()
    report["best_threshold_with_truth"] = best_threshold
    report[f"best_MAP@{args.k}_with_truth"] = best_map
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for note in analysis.notes:
            print(f"note: {note}", file=sys.stderr)
        print(_format_report(report))
    return 0


def cmd_score(args) -> int:
    from core.prediction.metrics import map_at_k
    from core.prediction.predict import read_submission, read_truth

    submission, truth = read_submission(args.submission), read_truth(args.truth)
    missing = [image_id for image_id in truth if image_id not in submission]
    if missing:
        print(
            f"note: {len(missing)} truth ids have no prediction (scored 0), e.g. {missing[0]}",
            file=sys.stderr,
        )
    extra = len(set(submission) - set(truth))
    if extra:
        print(
            f"note: {extra} submission ids are not in the truth file and are ignored",
            file=sys.stderr,
        )
    ids = list(truth)
    print(
        f"MAP@{args.k} = {map_at_k([truth[i] for i in ids], [submission.get(i, []) for i in ids], args.k):.6f}"
    )
    return 0


def cmd_compare(args) -> int:
    import json

    from core.methods.compare import as_json, compare_methods, format_table

    embeddings = _load(args).embeddings
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    comparison = compare_methods(
        embeddings,
        _predict_config(args),
        methods,
        progress=lambda name: print(f"running {name}…", file=sys.stderr),
    )
    print(json.dumps(as_json(comparison), indent=2) if args.json else format_table(comparison))
    return 0


def _ensemble_members(args):
    from core.analysis.loading import is_embeddings_file

    if all(is_embeddings_file(source) for source in args.sources):
        if len(args.sources) < 2:
            raise ValueError("an ensemble needs at least two embeddings .parquet files")
        return [_load(args, source=source).embeddings for source in args.sources]
    if len(args.sources) != 1:
        raise ValueError(
            "give one dataset with two or more --model, or two or more embeddings .parquet files"
        )
    models = args.model or []
    if len(models) < 2:
        raise ValueError(
            f"an ensemble needs at least two models; got {len(models)} (repeat --model)"
        )
    return [_load(args, source=args.sources[0], model=model).embeddings for model in models]


def cmd_ensemble(args) -> int:
    from core.io.parquet import write_embeddings
    from core.methods.ensemble import combine, search_weights, validation_map
    from core.prediction.config import PredictConfig

    out = _checked_out(args.out, args.sources) if args.out else None
    members = _ensemble_members(args)
    if args.weights:
        if len(args.weights) != len(members):
            raise ValueError(
                f"{len(args.weights)} weights for {len(members)} models; give one weight per model"
            )
        combined = combine(members, args.weights, args.mode)
        print(f"ensemble: {combined.model}")
    else:

        def show(step):
            weights = ", ".join(f"{w:.3g}" for w in step.weights)
            print(
                f"tried {step.model} at ratio {step.ratio:.3f}: validation MAP {step.metric:.4f} ({weights})",
                file=sys.stderr,
            )

        metric = validation_map(_config(PredictConfig, args))
        search = search_weights(members, metric, mode=args.mode, progress=show)
        print(search.table())
        combined = search.embeddings
    if out:
        write_embeddings(out, combined)
        print(f"wrote {len(combined.ids)} ensemble vectors to {args.out}")
    return 0


def _stage_lines():
    """A Watch report that prints each stage once, on stderr, as it starts (steps within a stage are not repeated)."""
    last = None

    def report(done: int, total: int, stage: str) -> None:
        nonlocal last
        if stage != last:
            last = stage
            print(f"{stage}…", file=sys.stderr)

    return report


def _flags_and_rule(analysis, args):
    """The distractor flags the options ask for and, for DBSCAN's, how to name them (None: the analysis's threshold rule)."""
    rule = None
    if args.detector == "dbscan":
        rule = f"flags from DBSCAN (eps {args.eps}, min_samples {args.min_samples}); the curves show the threshold of {analysis.threshold_source}"
    return _flags(analysis, args), rule


def _projected(analysis, method: str, watch):
    """The map of the analysis's train and test vectors, its stages on the watch."""
    from core.maps.projection import ProjectionConfig, kept_projection

    watch.stage(
        f"projecting {len(analysis.train.ids) + len(analysis.test.ids):,} points ({method})"
    )
    return kept_projection(
        analysis.train.vectors,
        analysis.test.vectors,
        ProjectionConfig(method=method),
        progress=watch.stage,
    )


def _analysed(loaded, args):
    """The analysis of the loaded embeddings, the Watch printing its stages, the flags the options ask for and how to name them."""
    from core.analysis.pipeline import analyse
    from core.progress import Watch

    watch = Watch(report=_stage_lines())
    analysis = analyse(loaded.embeddings, _predict_config(args), watch=watch)
    return analysis, watch, *_flags_and_rule(analysis, args)


def cmd_report(args) -> int:
    from core.audit.findings import AuditConfig, audit
    from core.report.config import ReportConfig
    from core.report.html import report_html, write_report

    out = _checked_out(args.out, [args.source])
    config = _config(ReportConfig, args)
    audit_config = _config(AuditConfig, args)
    loaded = _load(args)
    analysis, watch, flags, rule = _analysed(loaded, args)
    found = audit(analysis, audit_config, watch)
    projection = _projected(analysis, config.map_method, watch)
    page = report_html(
        loaded,
        analysis,
        projection,
        name=loaded.name,
        images=loaded.images,
        threshold_rule=rule,
        flags=flags,
        config=config,
        watch=watch,
        audit=found,
    )
    write_report(out, page)
    print(
        f"wrote {args.out} ({len(page.encode()) / 1e6:.1f} MB): open it in any browser, no network needed"
    )
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from core.audit.findings import AuditConfig, audit
    from core.exports import FORMAT_NAMES, export, written_files
    from core.exports.fiftyone import check_images
    from core.exports.items import export_items

    folder = Path(
        _checked_out(args.out, [args.source], folder=True, writes=written_files(args.format))
    )
    loaded = _load(args)
    if args.format == "fiftyone":
        # before the analysis: an embeddings Parquet has no image files
        check_images(loaded.images.values())
    analysis, watch, flags, rule = _analysed(loaded, args)
    found = audit(analysis, _config(AuditConfig, args), watch)
    items = export_items(analysis, loaded.images, flags=flags, rule=rule, audit=found)
    options = (
        {"projection": _projected(analysis, args.map_method, watch)}
        if args.format == "atlas"
        else {}
    )
    exported = export(args.format, items, folder, loaded.name, watch, **options)
    for note in exported.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote {', '.join(path.name for path in exported.files)} for {FORMAT_NAMES[args.format]} to {args.out}"
    )
    print(f"open it with:\n{exported.how_to_open}")
    return 0


def _audit_summary(found, leaked, top: int) -> dict:
    """The audit as plain data: each scope's cut, the count of each kind, the leakage effect and the top findings."""
    from dataclasses import asdict

    from core.audit.findings import KINDS

    findings = found.findings()
    return {
        "cuts": {scope: asdict(cut) for scope, cut in found.cuts.items()},
        "counts": found.counts(),
        "leakage": asdict(leaked),
        "top": {
            kind: [finding.row() for finding in findings if finding.kind == kind][:top]
            for kind in KINDS
        },
        "notes": found.notes,
    }


def _print_audit(summary: dict, k: int) -> None:
    """One line per finding kind, the leakage effect, then the top findings; user text with its controls shown."""
    from core.audit.findings import CUT_SCOPES, KIND_NAMES
    from core.display import visible_controls

    for scope, cut in summary["cuts"].items():
        print(f"cut for {CUT_SCOPES[scope]}: {cut['value']:.4f} ({cut['source']})")
    for kind, count in summary["counts"].items():
        print(f"{KIND_NAMES[kind]}: {count}")
    leaked = summary["leakage"]
    if leaked["same_label"] is not None:
        without = leaked["map_without_duplicates"]
        print(
            f"leakage: {leaked['same_label']} of {leaked['pairs']} near-duplicates carry their test image's true label; "
            f"MAP@{k} {leaked['map_as_analysed']:.4f} as analysed, {leaked['map_taking_duplicate_label']:.4f} when "
            f"each takes its duplicate's label, "
            + ("n/a" if without is None else f"{without:.4f}")
            + " without them"
        )
    for kind, rows in summary["top"].items():
        if rows:
            print(f"\ntop {KIND_NAMES[kind]}:")
        for row in rows:
            shown = [
                row["id"],
                row["other_id"] or None,
                row["suggested_label"] and f"→ {row['suggested_label']}",
            ]
            print(
                f"  {row['score']}  " + "  ".join(visible_controls(part) for part in shown if part)
            )
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)


def cmd_audit(args) -> int:
    import json

    from core.audit.effects import leakage
    from core.audit.findings import AuditConfig, audit, write_findings

    out = _checked_out(args.out, [args.source]) if args.out else None
    config = _config(AuditConfig, args)  # bad options are refused before the dataset is read
    _predict_config(args)
    loaded = _load(args)
    analysis, watch, _, _ = _analysed(loaded, args)
    found = audit(analysis, config, watch)
    summary = _audit_summary(found, leakage(found), args.top)
    if out:
        write_findings(out, found.findings())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_audit(summary, analysis.config.k)
    if out:
        print(f"wrote {len(found.findings())} findings to {args.out}", file=sys.stderr)
    return 0


def _add_config_options(parser, config_class, only=None, skip=()) -> None:
    """One option per field of `config_class` (or of `only`): --field-name, with the field's default, type, choices and help."""
    import argparse
    from dataclasses import MISSING, fields
    from typing import get_args, get_type_hints

    types = get_type_hints(config_class)
    for field in fields(config_class):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        flag = "--" + field.name.replace("_", "-")
        value_type = next(
            t for t in (get_args(types[field.name]) or (types[field.name],)) if t is not type(None)
        )
        help_text = field.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if field.default is MISSING:
            raise TypeError(f"{config_class.__name__}.{field.name} needs a default to be an option")
        if value_type is bool:
            action = argparse.BooleanOptionalAction if field.default else "store_true"
            parser.add_argument(flag, action=action, default=field.default, help=help_text)
            continue
        if field.default is not None:
            help_text += " (default: %(default)s)"
        parser.add_argument(
            flag,
            type=value_type,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=help_text,
        )


def _add_source(
    parser,
    what="a dataset folder or .zip, a Hugging Face dataset (save_to_disk folder or hf:owner/name), or an embeddings .parquet",
):
    from core.embedding.config import EmbedConfig
    from core.io.hf_datasets import HfSelection

    parser.add_argument("source", help=what)
    _add_config_options(parser, EmbedConfig)
    _add_config_options(parser, HfSelection)


def _add_prediction(parser):
    from core.detection.distractors import DbscanConfig
    from core.prediction.config import PredictConfig

    _add_config_options(parser, PredictConfig)
    parser.add_argument(
        "--detector",
        default="threshold",
        choices=("threshold", "dbscan"),
        help="how distractors are flagged (default: %(default)s); dbscan uses the DBSCAN options",
    )
    _add_config_options(parser, DbscanConfig)


def build_parser():
    import argparse

    from core.audit.findings import AuditConfig
    from core.embedding.config import EmbedConfig
    from core.embedding.ray_engine import EngineConfig
    from core.embedding.runner import ROWS_PER_PART
    from core.exports import EXPORT_FORMATS
    from core.io.hf_datasets import HfSelection
    from core.maps.projection import METHOD_CHOICES, PROJECTION_METHODS
    from core.methods.compare import COMPARE_METHODS
    from core.methods.ensemble import MODES
    from core.prediction.config import PredictConfig
    from core.report.config import ReportConfig

    parser = argparse.ArgumentParser(
        prog="python -m core", description="Retrieval Lab: image retrieval with distractors."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="write the built-in demo dataset (no download)")
    demo.add_argument("out_dir")
    demo.add_argument(
        "--digits", action="store_true", help="write scikit-learn's handwritten digits instead"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)

    commands.add_parser("models", help="list the known models").set_defaults(run=cmd_models)

    embed = commands.add_parser(
        "embed",
        help="embed a dataset into a folder of Parquet part files, resumable, or one Parquet file (cached)",
    )
    _add_source(
        embed,
        "a dataset folder or .zip, or a Hugging Face dataset (save_to_disk folder or hf:owner/name)",
    )
    embed.add_argument(
        "--out",
        required=True,
        help="a folder (a name without a suffix, or ending in /) gets part files as batches are done, and a rerun embeds only the "
        "ids it lacks; a file name (x.parquet) gets one file, written at the end",
    )
    embed.add_argument(
        "--rows-per-part",
        type=int,
        default=ROWS_PER_PART,
        help="rows per part file in an --out folder (default: %(default)s)",
    )
    _add_config_options(embed, EngineConfig)
    embed.set_defaults(run=cmd_embed)

    predict = commands.add_parser(
        "predict", help="top-5 labels with -1 for distractors, as a submission CSV"
    )
    _add_source(predict)
    _add_prediction(predict)
    predict.add_argument("--out", required=True, help="submission .csv to write")
    predict.set_defaults(run=cmd_predict)

    evaluate = commands.add_parser(
        "evaluate", help="MAP@5 and distractor figures for a dataset with test truth"
    )
    _add_source(evaluate)
    _add_prediction(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(run=cmd_evaluate)

    score = commands.add_parser(
        "score", help="MAP@5 of a submission against a truth CSV (id,label)"
    )
    score.add_argument("submission")
    score.add_argument("truth")
    _add_config_options(score, PredictConfig, only=("k",))
    score.set_defaults(run=cmd_score)

    compare = commands.add_parser(
        "compare",
        help="every method on the same split: MAP@5, mP@5, top-1, distractor F1, fit time",
    )
    _add_source(compare)
    _add_prediction(compare)
    compare.add_argument(
        "--methods", help="comma-separated subset of: " + ", ".join(COMPARE_METHODS)
    )
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(run=cmd_compare)

    ensemble = commands.add_parser(
        "ensemble", help="combine models (norm-scaled) with given or searched weights"
    )
    ensemble.add_argument(
        "sources",
        nargs="+",
        help="one dataset (with two or more --model) or two or more embeddings .parquet",
    )
    ensemble.add_argument("--model", action="append", help="a model to include; repeat for each")
    _add_config_options(ensemble, EmbedConfig, skip=("model",))
    _add_config_options(ensemble, HfSelection)
    ensemble.add_argument(
        "--weights",
        type=float,
        nargs="+",
        help="one weight per model; without it, weights are searched one model at a time",
    )
    ensemble.add_argument(
        "--mode",
        default=MODES[0],
        choices=MODES,
        help="weighted sum (equal dimensions) or concatenation (default: %(default)s)",
    )
    # the search validates on train
    _add_config_options(ensemble, PredictConfig, skip=("threshold", "auto"))
    ensemble.add_argument("--out", help="ensemble embeddings .parquet to write")
    ensemble.set_defaults(run=cmd_ensemble)

    report = commands.add_parser(
        "report", help="one self-contained HTML file to share: metrics, curves, map and neighbours"
    )
    _add_source(report)
    _add_prediction(report)
    _add_config_options(report, ReportConfig)
    _add_config_options(report, AuditConfig)
    report.add_argument("--out", required=True, help="report .html to write")
    report.set_defaults(run=cmd_report)

    export = commands.add_parser(
        "export",
        help="every item with its predictions and vector for FiftyOne, Embedding Atlas or TensorBoard's projector",
    )
    _add_source(export)
    _add_prediction(export)
    _add_config_options(export, AuditConfig)
    export.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="the tool to open the export in"
    )
    export.add_argument(
        "--map-method",
        default="umap",
        choices=PROJECTION_METHODS,
        help=f"projection giving the atlas format its x and y: {METHOD_CHOICES} (default: %(default)s)",
    )
    export.add_argument(
        "--out",
        required=True,
        help="folder to write the export into (made if missing; files of the same names are replaced)",
    )
    export.set_defaults(run=cmd_export)

    audit = commands.add_parser(
        "audit",
        help="train↔test near-duplicates (leakage), suspected mislabelled train images, duplicate groups",
    )
    _add_source(audit)
    _add_prediction(audit)
    _add_config_options(audit, AuditConfig)
    audit.add_argument(
        "--top", type=int, default=5, help="findings of each kind printed (default: %(default)s)"
    )
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.add_argument(
        "--out", help="findings .csv to write: one row per finding, at the default cuts"
    )
    audit.set_defaults(run=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    Interrupt.received = False
    handler = signal.signal(signal.SIGINT, Interrupt.handle)
    try:
        code = _run(argv)
        Interrupt.raise_if_received()
        return code
    except KeyboardInterrupt as interrupt:
        return _interrupted(str(interrupt))
    except BaseException:
        if Interrupt.received:  # a library's error standing for the Ctrl-C
            return _interrupted("")
        raise
    finally:
        if not Interrupt.received:  # an interrupted run keeps ignoring Ctrl-C until it has left
            signal.signal(signal.SIGINT, handler)


def _interrupted(kept: str) -> int:
    # A second Ctrl-C while saying goodbye (or while threads wind down) must not print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The work that raised it may say what it kept; a local run's batches are in the cache.
    print(
        f"\ninterrupted: {kept or 'finished batches are cached and will be reused'}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _run(argv: list[str] | None) -> int:
    import warnings

    from core.embedding.hub import ModelUnavailableError

    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except (ValueError, ModelUnavailableError, OSError) as error:
        Interrupt.raise_if_received()  # a library's error standing for the Ctrl-C
        ProgressBar.end_unfinished_line()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _holds_ray() -> bool:
    """Whether this process is still joined to Ray: a Ray run that failed or was interrupted leaves it so."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


if __name__ == "__main__":
    code = main()
    if code == EXIT_INTERRUPTED or _holds_ray():
        # CPython ends with a SIGINT of its own (exit status -2, not 130) when the Ctrl-C landed in a
        # library's PyRun_* call during import, even though main handled it; and the interpreter's
        # teardown under the threads of a Ray run that stopped can crash (SIGSEGV) after the one line
        # was printed: leave without finalising.
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
