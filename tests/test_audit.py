"""Tests for core.audit: near-duplicates, mislabels, duplicate groups and look-alike classes, the cut, the effects, the command."""

import csv
import io
import shutil

import numpy as np
import pytest

from bench.audit import injected_digits
from core.__main__ import main
from core.analysis.pipeline import analyse
from core.audit.cut import FALLBACK_CUT, choose_cut, closeness, similarity_at
from core.audit.effects import cleaned_train_csv, leakage, relabel_csv, what_if
from core.audit.findings import (
    DUPLICATE,
    FINDINGS_COLUMNS,
    MISLABEL,
    NEAR_DUPLICATE,
    AuditConfig,
    audit,
    findings_csv,
)
from core.io.demo import write_demo_dataset
from core.prediction.config import PredictConfig
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

FLOOR = 0.95  # precision and recall of near-duplicates, issue #25


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return hits / max(len(found), 1), hits / max(len(truth), 1)


@pytest.fixture(scope="module")
def injected():
    return injected_digits(seed=0, per_class=30)


@pytest.fixture(scope="module")
def audited(injected):
    return audit(analyse(injected.embeddings, PredictConfig()))


def test_test_copies_of_train_images_are_found_at_the_default_cut(injected, audited):
    pairs = audited.near_duplicates()
    precision, recall = precision_recall(
        {(p.id, p.other_id) for p in pairs}, set(injected.copies.items())
    )
    assert precision >= FLOOR and recall >= FLOOR
    # each pair names the label its train image would give the test image
    labels = dict(zip(audited.analysis.train.ids.tolist(), audited.analysis.train.labels.tolist()))
    assert all(pair.suggested_label == labels[pair.other_id] for pair in pairs)


def test_flipped_train_labels_are_suspected_with_their_true_class_suggested(injected, audited):
    suspects = {finding.id: finding for finding in audited.mislabels}
    precision, recall = precision_recall(set(suspects), injected.flipped)
    assert recall >= 0.9 and precision >= 0.5
    right = [
        suspects[i].suggested_label == injected.true_train_labels[i]
        for i in injected.flipped & set(suspects)
    ]
    assert np.mean(right) >= 0.9
    labels = dict(zip(audited.analysis.train.ids.tolist(), audited.analysis.train.labels.tolist()))
    assert all(
        labels[audited.nearest_train_image(f.id)] == f.suggested_label for f in audited.mislabels
    )
    assert [f.score for f in audited.mislabels] == sorted(
        (f.score for f in audited.mislabels), reverse=True
    )


def test_a_set_without_injected_problems_has_few_findings():
    clean = injected_digits(seed=0, per_class=30, flipped_share=0, copied_share=0)
    found = audit(analyse(clean.embeddings, PredictConfig()))
    counts = found.counts()
    assert counts[NEAR_DUPLICATE] <= 0.01 * len(found.analysis.test.ids)
    assert counts[MISLABEL] <= 0.02 * len(found.analysis.train.ids)


def test_the_cut_falls_between_the_same_class_mode_and_the_copies():
    rng = np.random.default_rng(0)
    natural = -np.expm1(-rng.normal(1.7, 0.5, 2000))  # a same-class mode near 0.82
    copies = -np.expm1(-rng.normal(7.0, 0.5, 50))  # copies near 0.999
    cut = choose_cut(np.r_[natural, copies], "test images' best similarities to train")
    assert natural.max() < cut.value < copies.min()
    assert cut.same_class_mode == pytest.approx(similarity_at(1.7), abs=0.03)
    assert cut.duplicate_mode == pytest.approx(similarity_at(7.0), abs=0.001)
    assert "peak at" in cut.source


def test_too_few_similarities_take_the_write_ups_cut_and_a_given_cut_is_kept():
    assert choose_cut([0.5, 0.99], "pairs").value == FALLBACK_CUT
    assert "fewer than" in choose_cut([0.5, 0.99], "pairs").source
    given = choose_cut([0.5, 0.99], "pairs", fixed=0.9)
    assert (
        given.value == 0.9
        and given.source == "given"
        and given.duplicate_mode == pytest.approx(0.99)
    )
    # an exact copy (similarity 1, or a float just above) stays finite on the log scale
    assert np.isfinite(closeness([1.0, 1.0000001])).all()


def vectors_around(rng, centres, noise=0.2):
    rows = centres + noise * rng.standard_normal(centres.shape)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def small_embeddings(train_labels, test_labels, train_vectors, test_vectors, ids=None):
    n_train = len(train_labels)
    ids = ids or [f"train-{i}" for i in range(n_train)] + [
        f"test-{i}" for i in range(len(test_labels))
    ]
    return Embeddings(
        np.array(ids, dtype=object),
        np.array([TRAIN] * n_train + [TEST] * len(test_labels)),
        np.array(list(train_labels) + list(test_labels), dtype=object),
        np.vstack([train_vectors, test_vectors]).astype(np.float32),
        "test vectors",
    )


def test_duplicates_inside_a_split_form_groups_largest_first():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((8, 16))
    train = vectors_around(rng, np.repeat(centres[:6], 3, axis=0))
    test = vectors_around(rng, centres[rng.integers(0, 8, 40)])
    test[5] = test[6] = test[7] = test[0]  # a group of four copies
    test[20] = test[21]  # and a pair
    embeddings = small_embeddings(
        [f"c{i}" for i in range(6) for _ in range(3)], [DISTRACTOR] * 40, train, test
    )
    found = audit(analyse(embeddings, PredictConfig()), AuditConfig(cut=0.999))
    pairs = found.duplicates(TEST)
    groups = {}
    for pair in pairs:
        groups.setdefault(pair.group, set()).update({pair.id, pair.other_id})
    assert groups == {1: {"test-0", "test-5", "test-6", "test-7"}, 2: {"test-20", "test-21"}}
    assert all(pair.kind == DUPLICATE and pair.split == TEST for pair in pairs)


def test_two_classes_of_one_cluster_look_like_one_class():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 32))
    labels = [f"c{i}" for i in range(6) for _ in range(4)]
    train = vectors_around(rng, np.repeat(centres, 4, axis=0), 0.1)
    # class c5 is drawn from c4's centre: two labels, one look
    train[20:24] = vectors_around(rng, np.repeat(centres[4:5], 4, axis=0), 0.1)
    test = vectors_around(rng, centres[rng.integers(0, 6, 30)], 0.1)
    found = audit(analyse(small_embeddings(labels, ["c0"] * 30, train, test), PredictConfig()))
    assert [{f.label, f.other_label} for f in found.similar_classes] == [{"c4", "c5"}]


def test_leakage_with_truth_counts_agreeing_labels_and_measures_map_without_the_copies(audited):
    leaked = leakage(audited)
    assert leaked.pairs == len(audited.near_duplicates())
    assert leaked.same_label >= 0.9 * leaked.pairs
    report = audited.analysis.report()
    assert leaked.map_as_analysed == pytest.approx(report.measured_map)
    assert 0.0 <= leaked.map_without_duplicates <= 1.0
    assert leaked.map_taking_duplicate_label >= leaked.map_as_analysed - 1e-9


def test_dropping_the_flipped_train_images_raises_map_and_writes_nothing(injected, audited):
    change = what_if(audited.analysis, drop=sorted(injected.flipped))
    assert change.dropped == len(injected.flipped)
    assert change.after.measured_map > change.before.measured_map
    relabelled = what_if(
        audited.analysis, relabel={i: injected.true_train_labels[i] for i in injected.flipped}
    )
    assert relabelled.after.measured_map > relabelled.before.measured_map
    rows = list(
        csv.DictReader(
            io.StringIO(cleaned_train_csv(audited.analysis, drop=sorted(injected.flipped)))
        )
    )
    assert len(rows) == len(audited.analysis.train.ids) - len(injected.flipped)
    with pytest.raises(ValueError, match="not train images, the first 'no such id'"):
        what_if(audited.analysis, drop=["no such id"])


HOSTILE = [
    "=cmd|' /C calc'!A0",
    'a,"quoted", id\nwith a line break',
    "![x](http://example.com/x.png)",
    "\u202egnp.exe",
    "tab\there",
]


def test_hostile_ids_and_labels_read_back_exactly_from_findings_csv():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 16))
    train = vectors_around(rng, np.repeat(centres, 2, axis=0))
    test = vectors_around(rng, centres[rng.integers(0, 5, 30)])
    test[0] = train[0]  # a leak
    labels = [HOSTILE[i] for i in range(5) for _ in range(2)]
    ids = [f"{HOSTILE[i % 5]} train {i}" for i in range(10)] + [
        f"{HOSTILE[i % 5]} test {i}" for i in range(30)
    ]
    found = audit(
        analyse(small_embeddings(labels, [labels[0]] * 30, train, test, ids), PredictConfig())
    )
    findings = found.findings()
    assert any(f.kind == NEAR_DUPLICATE for f in findings)
    rows = list(csv.DictReader(io.StringIO(findings_csv(findings), newline="")))
    assert tuple(rows[0]) == FINDINGS_COLUMNS
    assert [(r["id"], r["other_id"], r["suggested_label"], r["label"]) for r in rows] == [
        (f.id, f.other_id, f.suggested_label, f.label) for f in findings
    ]
    relabels = list(csv.DictReader(io.StringIO(relabel_csv(found.mislabels), newline="")))
    assert [r["id"] for r in relabels] == [f.id for f in found.mislabels]


def test_a_bad_cut_is_refused_by_name():
    with pytest.raises(ValueError, match=r"cut is a cosine similarity in \(0, 1\], got 1.5"):
        AuditConfig(cut=1.5)


# ---------------------------------------------------------------- the command, on every source kind


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory):
    """A small demo dataset with one train image copied into test under another name: a known leak."""
    root = write_demo_dataset(
        tmp_path_factory.mktemp("demo"),
        n_classes=4,
        train_per_class=3,
        test_per_class=4,
        n_distractor_classes=1,
        distractor_per_class=4,
        size=32,
    )
    source = next((root / "train").rglob("*.jpg"))
    shutil.copy(source, root / "test" / source.parent.name / "leaked.jpg")
    return root


def _as_train_csv(folder, out):
    """The folder as images/ with train.csv and test.csv beside them."""
    (out / "images").mkdir(parents=True)
    for split in (TRAIN, TEST):
        rows = ["image,label"]
        for path in sorted((folder / split).rglob("*.jpg")):
            name = f"{split}-{path.parent.name}-{path.name}".replace(" ", "_")
            shutil.copy(path, out / "images" / name)
            rows.append(f"images/{name},{path.parent.name}")
        (out / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out / "train.csv"


def _as_hf_dataset(folder, out):
    import datasets

    splits = {}
    for split in (TRAIN, TEST):
        paths = sorted((folder / split).rglob("*.jpg"))
        splits[split] = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": p.read_bytes(), "path": None} for p in paths],
                "label": [p.parent.name for p in paths],
            },
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.Value("string")}
            ),
        )
    datasets.DatasetDict(splits).save_to_disk(out)
    return out


@pytest.mark.parametrize("kind", ["folder", "train.csv", "zip", "parquet", "parts", "hf"])
def test_audit_finds_the_leak_in_every_source_kind(kind, leaky_folder, tmp_path, workspace, capsys):
    baseline = ["--model", "baseline"]
    if kind == "folder":
        source = leaky_folder
    elif kind == "train.csv":
        source = _as_train_csv(leaky_folder, tmp_path / "csv")
    elif kind == "zip":
        source = shutil.make_archive(str(tmp_path / "leaky"), "zip", leaky_folder)
    elif kind == "hf":
        source = _as_hf_dataset(leaky_folder, tmp_path / "hf")
    else:
        source = tmp_path / ("vectors/" if kind == "parts" else "vectors.parquet")
        assert main(["embed", str(leaky_folder), *baseline, "--out", str(source)]) == 0
        baseline = []
    out = tmp_path / "out" / "findings.csv"
    assert main(["audit", str(source), *baseline, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "train↔test near-duplicates: " in printed
        and "suspected mislabelled train images: " in printed
    )
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    leaks = [row for row in rows if row["kind"] == NEAR_DUPLICATE]
    assert len(leaks) == 1 and float(leaks[0]["score"]) > 0.999
    # a Hugging Face dataset's images are named by row
    assert "leaked" in leaks[0]["id"] or kind == "hf"
    assert leaks[0]["suggested_label"] == leaks[0]["label"]


def test_audit_json_gives_the_cuts_counts_and_leakage(leaky_folder, workspace, capsys):
    assert main(["audit", str(leaky_folder), "--model", "baseline", "--json", "--cut", "0.99"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert {cut["value"] for cut in summary["cuts"].values()} == {0.99}
    assert summary["counts"][NEAR_DUPLICATE] == 1 and summary["leakage"]["same_label"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cut", "0"], "cut is a cosine similarity in (0, 1], got 0.0"),
        (["--contamination", "2"], "contamination must be a share"),
        (["--out", "{source}/test/findings.csv"], "inside the dataset folder"),
    ],
)
def test_bad_audit_input_is_one_line_and_exit_2(argv, message, leaky_folder, workspace, capsys):
    argv = [part.format(source=leaky_folder) for part in argv]
    assert main(["audit", str(leaky_folder), "--model", "baseline", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_the_report_lists_the_audit_with_hostile_ids_and_labels_as_text(tmp_path, workspace):
    from core.io.parquet import write_embeddings

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((5, 16))
    train = vectors_around(rng, np.repeat(centres, 2, axis=0))
    test = vectors_around(rng, centres[rng.integers(0, 5, 30)])
    test[0] = train[0]
    labels = ["<img src=x onerror=alert(1)>" if i == 0 else f"class {i}" for i in range(5)]
    train_labels = [label for label in labels for _ in range(2)]
    ids = ["<script>alert(1)</script>"] + [f"train {i}" for i in range(1, 10)]
    ids += [f"test {i}" for i in range(30)]
    path = tmp_path / "hostile.parquet"
    write_embeddings(path, small_embeddings(train_labels, [labels[0]] * 30, train, test, ids))
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--map-method", "pca", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    audit_part = page.split("<h2>Audit</h2>", 1)[1].split("<h2>", 1)[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in audit_part
    assert "&lt;img src=x onerror=alert(1)&gt;" in audit_part
    assert "<script>alert" not in page and "<img src=x" not in page


def test_atlas_and_fiftyone_exports_carry_each_items_findings(leaky_folder, tmp_path, workspace):
    import json

    import pyarrow.parquet as pq

    export = ["export", str(leaky_folder), "--model", "baseline", "--format"]
    atlas = tmp_path / "atlas"
    assert main([*export, "atlas", "--map-method", "pca", "--out", str(atlas)]) == 0
    table = pq.read_table(atlas / "atlas.parquet").to_pydict()
    leaked = table["id"].index("leaked.jpg")
    copied = table["near_duplicate_of"][leaked]
    assert copied is not None and table["split"][table["id"].index(copied)] == TRAIN
    assert sum(value is not None for value in table["near_duplicate_of"]) == 1
    fiftyone = tmp_path / "fiftyone"
    assert main([*export, "fiftyone", "--out", str(fiftyone)]) == 0
    samples = json.loads((fiftyone / "samples.json").read_text(encoding="utf-8"))["samples"]
    marked = [sample for sample in samples if sample.get("near_duplicate_of")]
    assert [sample["near_duplicate_of"] for sample in marked] == [copied]
    assert all("suggested_label" in sample and "duplicate_group" in sample for sample in samples)
