import json

import numpy as np
import pytest
from test_pipeline import clustered_embeddings

from core.analysis.pipeline import analyse
from core.methods.compare import COMPARE_METHODS, TIE_MARGIN, as_json, compare_methods, format_table
from core.methods.heads import HeadConfig
from core.prediction.config import PredictConfig

# Fewer steps than the default keep the file fast; the data are small and well clustered.
FAST = HeadConfig(min_steps=150)


def linear_targets(embeddings, seed=1, width=24):
    """A known target per item (like a prompt's text embedding): a fixed linear map of its vector."""
    return embeddings.vectors @ np.random.default_rng(seed).normal(size=(embeddings.dim, width))


@pytest.fixture(scope="module")
def embeddings():
    return clustered_embeddings(spread=1.0)


@pytest.fixture(scope="module")
def comparison(embeddings):
    seen = []
    result = compare_methods(
        embeddings, head_config=FAST, targets=linear_targets(embeddings), progress=seen.append
    )
    return result, seen


def test_every_method_runs_and_beats_chance(comparison):
    result, seen = comparison
    assert [row.key for row in result.rows] == list(COMPARE_METHODS)
    assert seen == list(COMPARE_METHODS.values())
    for row in result.rows:
        # Chance MAP@5 is about 0.15 with 20 classes, 29% distractors and 30% flagged at random.
        assert row.map_at_k > 0.35, row
        assert row.top1 > 0.3 and row.distractor_f1 > 0.3, row
        assert row.fit_seconds >= 0 and row.device != "-"
    by_key = {row.key: row for row in result.rows}
    assert by_key["linear"].mean_precision is None  # a classifier has no embedding space
    assert by_key["triplet"].mean_precision > 0.5
    assert "mean cosine" in by_key["knn-regression"].note
    assert "test split (truth known)" in result.evaluated_on


def test_baseline_row_is_the_main_pipeline(comparison, embeddings):
    baseline = comparison[0].rows[0]
    report = analyse(embeddings, PredictConfig()).report()
    assert baseline.map_at_k == pytest.approx(report.measured_map)
    assert baseline.mean_precision == pytest.approx(report.measured.mean_precision)
    assert baseline.distractor_f1 == pytest.approx(report.measured.detection.f1)


def test_verdicts_say_plainly_who_loses_to_cosine_knn(comparison):
    result, _ = comparison
    baseline = result.rows[0].map_at_k
    trained = result.rows[1:]
    assert len(result.verdicts) == len(trained)
    for row, verdict in zip(trained, result.verdicts):
        assert verdict.startswith(row.method)
        gap = row.map_at_k - baseline
        expected = "ties with" if abs(gap) < TIE_MARGIN else "beats" if gap > 0 else "loses to"
        assert f"{expected} plain cosine kNN" in verdict
        if expected != "ties with":
            assert f"by {abs(gap):.2f} MAP@5" in verdict
    assert any("loses to plain cosine kNN" in verdict for verdict in result.verdicts)


def test_table_and_json(comparison):
    result, _ = comparison
    table = format_table(result)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    for column in ("MAP@5", "mP@5", "top-1", "distr. F1", "fit s", "device", "note"):
        assert column in header
    for row in result.rows:
        assert any(line.startswith(row.method) and f"{row.map_at_k:.3f}" in line for line in lines)
    assert "Verdicts:" in table and "Evaluated on the test split" in table
    data = json.loads(json.dumps(as_json(result)))
    assert data["k"] == 5 and len(data["methods"]) == len(COMPARE_METHODS)
    assert data["methods"][0]["MAP@5"] == pytest.approx(result.rows[0].map_at_k)
    assert data["verdicts"] == result.verdicts


def test_unlabelled_test_set_is_compared_on_train_with_pseudo_distractors():
    embeddings = clustered_embeddings(spread=1.0, n_classes=30, truth=False)
    result = compare_methods(
        embeddings, methods=["cosine", "linear", "knn-regression"], head_config=FAST
    )
    assert "held out as pseudo-distractors" in result.evaluated_on
    rows = {row.key: row for row in result.rows}
    assert rows["cosine"].map_at_k > 0.35 and rows["linear"].map_at_k > 0.35
    assert rows["knn-regression"].map_at_k is None and rows["knn-regression"].note.startswith(
        "skipped"
    )
    assert "skipped" in format_table(result)


def test_results_are_deterministic(embeddings):
    def run():
        data = as_json(compare_methods(embeddings, methods=["arcface", "bce"], head_config=FAST))
        for row in data["methods"]:
            row.pop("fit_seconds")
        return data

    assert run() == run()


def test_a_failing_method_leaves_the_others_standing(embeddings):
    result = compare_methods(
        embeddings,
        PredictConfig(threshold=0.5),
        methods=["arcface", "linear"],
        head_config=HeadConfig(dim=128),
    )
    rows = {row.key: row for row in result.rows}
    assert rows["arcface"].map_at_k is None and "failed: " in rows["arcface"].note
    assert "at most 64 dimensions" in rows["arcface"].note
    assert rows["linear"].map_at_k > 0.35
    assert any("cosine kNN (pre-trained) added" in note for note in result.notes)
    assert any("one rule" in note for note in result.notes)


def test_bad_arguments_are_explained(embeddings):
    with pytest.raises(ValueError, match=r"unknown method.*'svm'.*use any of cosine"):
        compare_methods(embeddings, methods=["svm"])
    with pytest.raises(ValueError, match="one row per embedding row"):
        compare_methods(embeddings, methods=["cosine"], targets=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 4 train classes"):
        compare_methods(clustered_embeddings(n_classes=3, truth=False), methods=["cosine"])
    with pytest.raises(ValueError, match="train split is empty"):
        compare_methods(embeddings.subset("test"))
