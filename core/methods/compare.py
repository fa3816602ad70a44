"""Every method on the same split and distractors, side by side: one table, verdicts against plain cosine kNN, JSON."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from core.analysis.pipeline import analyse
from core.detection.distractors import ThresholdSweep
from core.detection.metrics import distractor_report
from core.methods.heads import HEADS, ClassifierHead, Head, HeadConfig, make_head
from core.methods.regression import DEFAULT_DEDUPE_THRESHOLD, knn_regress, mean_cosine
from core.prediction.config import PredictConfig
from core.prediction.metrics import map_at_k, top1_accuracy
from core.prediction.predict import place_distractor
from core.prediction.validation import (
    check_classes_to_hold_out,
    check_train_labels,
    pseudo_distractor_split,
)
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.search.index import checked_vectors, unit_rows

BASELINE_METHOD = "cosine"
REGRESSION = "knn-regression"
COMPARE_METHODS = {
    BASELINE_METHOD: "cosine kNN (pre-trained)",
    **{key: head.name for key, head in HEADS.items()},
    REGRESSION: "kNN regression",
}
# A MAP@k difference smaller than this is called a tie.
TIE_MARGIN = 0.005

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MethodResult:
    """One method's scores on the shared split; None where a score does not apply or the method did not run."""

    key: str  # short name, as in COMPARE_METHODS
    method: str  # name shown to people
    map_at_k: float | None = None  # MAP@k with "-1" placed by the method's own scores
    # mP@k of the method's embedding space; None for classifiers
    mean_precision: float | None = None
    top1: float | None = None  # share of queries whose first prediction is right ("-1" included)
    distractor_f1: float | None = None  # F1 of the "-1" flags against the true distractors
    fit_seconds: float | None = None  # training time (0 for methods that do not train)
    device: str = "-"  # where it ran
    note: str = ""  # what people should know about this row


@dataclass(frozen=True)
class Comparison:
    """Every method's row, how they were evaluated, and a plain verdict for each against cosine kNN."""

    rows: list[MethodResult]
    evaluated_on: str  # which split the scores come from, for people
    k: int
    contamination: float  # share of each method's queries flagged as "-1"
    verdicts: list[
        str
    ]  # one line per trained method: loses to / beats / ties with plain cosine kNN
    notes: list[str]


@dataclass(frozen=True)
class _Split:
    """Gallery and query rows with truth: real train/test, or train with held-out pseudo-distractor classes."""

    embeddings: Embeddings  # gallery rows as train, query rows as test (labels = truth)
    gallery_rows: np.ndarray  # rows of the caller's embeddings
    query_rows: np.ndarray
    description: str

    @property
    def gallery(self) -> Embeddings:
        return self.embeddings.subset(TRAIN)

    @property
    def queries(self) -> Embeddings:
        return self.embeddings.subset(TEST)

    def with_vectors(self, vectors: np.ndarray, model: str) -> Embeddings:
        return replace(self.embeddings, vectors=vectors, model=model)


def _evaluation_split(embeddings: Embeddings, config: PredictConfig) -> _Split:
    train_rows = np.flatnonzero(embeddings.mask(TRAIN))
    labels = embeddings.labels[train_rows].astype(object)
    if len(train_rows) == 0:
        raise ValueError("the train split is empty: label some images under train/<label>/")
    check_train_labels(labels)
    if embeddings.has_test_truth:
        query_rows = np.flatnonzero(embeddings.mask(TEST))
        gallery_rows, truth = train_rows, embeddings.labels[query_rows].astype(object)
        source = "the test split (truth known)"
    else:
        check_classes_to_hold_out(
            labels,
            "the test split has no truth, so methods are compared on train with held-out classes; that",
            "give the test split its truth",
        )
        gallery, queries, truth, held = pseudo_distractor_split(
            labels, config.contamination, np.random.default_rng(config.seed)
        )
        gallery_rows, query_rows = train_rows[gallery], train_rows[queries]
        source = f"train only, the test split has no truth: {held} classes held out as pseudo-distractors"
    rows = np.concatenate([gallery_rows, query_rows])
    split = Embeddings(
        embeddings.ids[rows],
        np.array([TRAIN] * len(gallery_rows) + [TEST] * len(query_rows)),
        np.concatenate([embeddings.labels[gallery_rows], truth]).astype(object),
        embeddings.vectors[rows],
        embeddings.model,
    )
    share = float(np.mean(truth == DISTRACTOR))
    description = f"{source}; {len(gallery_rows)} gallery and {len(query_rows)} query items, {share:.0%} distractors"
    return _Split(split, gallery_rows, query_rows, description)


def _space_scores(space: Embeddings, config: PredictConfig) -> dict:
    """Cosine kNN in a space: the main pipeline's own analysis and report."""
    measured = analyse(space, config).report().measured
    return dict(
        map_at_k=measured.map_at_k,
        mean_precision=measured.mean_precision,
        top1=measured.top1_accuracy,
        distractor_f1=measured.detection.f1,
    )


def _classifier_scores(head: ClassifierHead, split: _Split, config: PredictConfig) -> dict:
    """A classifier ranked by probability; "-1" placed by the same contamination rule on its best probability."""
    ranking = head.rank(split.queries.vectors, config.k)
    truth = split.queries.labels.astype(object)
    flags = ranking.scores < ThresholdSweep(ranking.scores).threshold_for(config.contamination)
    rows = place_distractor(ranking.labels, flags, config.k)
    return dict(
        map_at_k=map_at_k(list(truth), rows, config.k),
        mean_precision=None,
        top1=top1_accuracy(list(truth), rows),
        distractor_f1=distractor_report(truth == DISTRACTOR, flags, ranking.scores).f1,
    )


def _head_result(
    key: str, split: _Split, config: PredictConfig, head_config: HeadConfig
) -> tuple[dict, Head, list[str]]:
    head = make_head(key, head_config)
    gallery = split.gallery
    notes = []
    if head.uses_labels:
        head.fit(gallery.vectors, gallery.labels)
    else:
        # Self-supervised: it may learn from every vector, as SimCLR heads are trained on the unlabelled test images.
        head.fit(split.embeddings.vectors)
        notes.append(f"self-supervised on all {len(split.embeddings.ids)} vectors, labels unused")
    if isinstance(head, ClassifierHead):
        scores = _classifier_scores(head, split, config)
    else:
        scores = _space_scores(
            split.with_vectors(head.transform(split.embeddings.vectors), head.name), config
        )
    return scores, head, notes + head.notes


def _regression_result(
    split: _Split, config: PredictConfig, targets: np.ndarray, dedupe_threshold: float | None
) -> tuple[dict, float, list[str]]:
    """Queries mapped to predicted targets, then cosine kNN among the gallery's true targets."""
    gallery_targets = targets[split.gallery_rows]
    if not np.all(np.isfinite(gallery_targets)):
        raise ValueError(
            "every gallery (train) item needs a finite target vector for kNN regression"
        )
    start = time.perf_counter()
    regression = knn_regress(
        split.gallery.vectors,
        gallery_targets,
        split.queries.vectors,
        dedupe_threshold=dedupe_threshold,
    )
    seconds = time.perf_counter() - start
    space = unit_rows(np.vstack([gallery_targets, regression.predictions]), "target vectors")
    scores = _space_scores(split.with_vectors(space, "kNN regression"), config)
    query_targets = targets[split.query_rows]
    known = np.all(np.isfinite(query_targets), axis=1)
    notes = list(regression.notes)
    if known.any():
        fit = mean_cosine(regression.predictions[known], query_targets[known])
        notes.insert(0, f"mean cosine {fit:.3f} to the true targets of {int(known.sum())} queries")
    return scores, seconds, notes


def _checked_methods(methods: Sequence[str] | None, notes: list[str]) -> list[str]:
    if methods is None:
        return list(COMPARE_METHODS)
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; use any of {', '.join(COMPARE_METHODS)}"
        )
    if BASELINE_METHOD not in methods:
        notes.append(f"{COMPARE_METHODS[BASELINE_METHOD]} added: every verdict compares against it")
    return [m for m in COMPARE_METHODS if m in methods or m == BASELINE_METHOD]


def _checked_targets(targets: np.ndarray | None, embeddings: Embeddings) -> np.ndarray | None:
    if targets is None:
        return None
    # NaN marks an item without a target; the regression refuses it only where it would use it.
    targets = checked_vectors(targets, "targets", finite=False)
    if len(targets) != len(embeddings.ids):
        raise ValueError(
            f"targets must be one row per embedding row ({len(embeddings.ids)}), got {len(targets)} rows"
        )
    return targets


def compare_methods(
    embeddings: Embeddings,
    config: PredictConfig = PredictConfig(),
    methods: Sequence[str] | None = None,
    head_config: HeadConfig = HeadConfig(),
    targets: np.ndarray | None = None,
    dedupe_threshold: float | None = DEFAULT_DEDUPE_THRESHOLD,
    progress: Progress | None = None,
) -> Comparison:
    """Run every method (keys of COMPARE_METHODS; default all) on one split with the same distractors.

    With test truth, test is the query set; otherwise train with classes held out as
    pseudo-distractors. Every method flags config.contamination of its queries by its own
    scores. `targets` (one row per embedding row, NaN where unknown, e.g. the text embedding of
    each image's prompt) enables kNN regression, deduplicated at `dedupe_threshold` (None: off).
    A method that fails gets a row saying why; the others still run.
    """
    notes: list[str] = []
    keys = _checked_methods(methods, notes)
    targets = _checked_targets(targets, embeddings)
    split = _evaluation_split(embeddings, config)
    if config.threshold is not None or config.auto:
        notes.append(
            "a fixed or validated threshold fits the cosine scores of one space only; every method here flags "
            f"{config.contamination:.0%} of its queries by its own scores, so all follow one rule"
        )
    space_config = replace(config, threshold=None, auto=False)
    rows = []
    for key in keys:
        if progress is not None:
            progress(COMPARE_METHODS[key])
        rows.append(_run_method(key, split, space_config, head_config, targets, dedupe_threshold))
    return Comparison(
        rows, split.description, config.k, config.contamination, _verdicts(rows, config.k), notes
    )


def _run_method(
    key: str,
    split: _Split,
    config: PredictConfig,
    head_config: HeadConfig,
    targets: np.ndarray | None,
    dedupe_threshold: float | None,
) -> MethodResult:
    row = partial(MethodResult, key, COMPARE_METHODS[key])
    try:
        if key == BASELINE_METHOD:
            return row(
                **_space_scores(split.embeddings, config),
                fit_seconds=0.0,
                device="cpu (faiss)",
                note="no training",
            )
        if key == REGRESSION:
            if targets is None:
                return row(note="skipped: no target vectors given (e.g. prompt text embeddings)")
            scores, seconds, notes = _regression_result(split, config, targets, dedupe_threshold)
            return row(**scores, fit_seconds=seconds, device="cpu (faiss)", note="; ".join(notes))
        scores, head, notes = _head_result(key, split, config, head_config)
        return row(
            **scores, fit_seconds=head.fit_seconds, device=head.device, note="; ".join(notes)
        )
    except (ValueError, RuntimeError) as error:
        return row(note=f"failed: {error}")


def _verdicts(rows: list[MethodResult], k: int) -> list[str]:
    baseline = next((row for row in rows if row.key == BASELINE_METHOD), None)
    if baseline is None or baseline.map_at_k is None:
        return []
    verdicts = []
    for row in rows:
        if row.key == BASELINE_METHOD or row.map_at_k is None:
            continue
        gap = row.map_at_k - baseline.map_at_k
        versus = f"({row.map_at_k:.3f} vs {baseline.map_at_k:.3f})"
        if abs(gap) < TIE_MARGIN:
            verdicts.append(f"{row.method} ties with plain cosine kNN on MAP@{k} {versus}")
        else:
            verb = "beats" if gap > 0 else "loses to"
            verdicts.append(
                f"{row.method} {verb} plain cosine kNN by {abs(gap):.2f} MAP@{k} {versus}"
            )
    return verdicts


def _shown(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(comparison: Comparison) -> str:
    """An aligned plain-text table, then the verdicts and notes."""
    k = comparison.k
    header = ("method", f"MAP@{k}", f"mP@{k}", "top-1", "distr. F1", "fit s", "device", "note")
    cells = [
        (
            r.method,
            _shown(r.map_at_k),
            _shown(r.mean_precision),
            _shown(r.top1),
            _shown(r.distractor_f1),
            _shown(r.fit_seconds, 2),
            r.device,
            r.note,
        )
        for r in comparison.rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header) - 1)]

    def line(row) -> str:
        numbers = "  ".join(cell.rjust(w) for cell, w in zip(row[1:-2], widths[1:-1]))
        return f"{row[0]:<{widths[0]}}  {numbers}  {row[-2]:<{widths[-1]}}  {row[-1]}".rstrip()

    lines = [
        f"Evaluated on {comparison.evaluated_on}.",
        f'Every method flags {comparison.contamination:.0%} of its queries as "{DISTRACTOR}" by its own scores.',
        "",
        line(header),
        *map(line, cells),
    ]
    if comparison.verdicts:
        lines += ["", "Verdicts:", *(f"  {v}" for v in comparison.verdicts)]
    if comparison.notes:
        lines += ["", "Notes:", *(f"  {n}" for n in comparison.notes)]
    return "\n".join(lines)


def as_json(comparison: Comparison) -> dict:
    """The comparison as plain JSON-ready data, metric names spelled with k."""
    k = comparison.k
    renamed = {"map_at_k": f"MAP@{k}", "mean_precision": f"mP@{k}"}
    return {
        "evaluated_on": comparison.evaluated_on,
        "k": k,
        "contamination": comparison.contamination,
        "methods": [
            {renamed.get(name, name): value for name, value in asdict(row).items()}
            for row in comparison.rows
        ],
        "verdicts": list(comparison.verdicts),
        "notes": list(comparison.notes),
    }
