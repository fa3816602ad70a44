import numpy as np
import pytest

from core.records import Embeddings
from core.retrieval.metrics import map_at_k
from core.retrieval.pipeline import (
    PredictConfig,
    analyse,
    check_classes_to_hold_out,
    check_train_labels,
    pseudo_distractor_split,
)


def clustered_embeddings(seed=0, n_classes=20, n_distractor_classes=8, train_per_class=3, test_per_class=4, dim=32, spread=0.35, truth=True):
    """Gaussian clusters on the sphere: train classes, test from the same classes plus distractor classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes + n_distractor_classes, dim))
    ids, splits, labels, vectors = [], [], [], []

    def add(split, label, centre, count):
        for _ in range(count):
            ids.append(f"{split}_{len(ids):04d}.jpg")
            splits.append(split)
            labels.append(label)
            vectors.append(centre + spread * rng.normal(size=dim))

    for c in range(n_classes):
        add("train", f"class{c}", centres[c], train_per_class)
    for c in range(n_classes + n_distractor_classes):
        add("test", f"class{c}" if c < n_classes else "-1", centres[c], test_per_class)
    v = np.array(vectors, np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = np.array(labels, dtype=object)
    if not truth:
        labels[np.array(splits) == "test"] = None
    return Embeddings(np.array(ids), np.array(splits), labels, v, "synthetic")


@pytest.fixture(scope="module")
def embeddings():
    return clustered_embeddings()


def test_contamination_flags_the_requested_share(embeddings):
    analysis = analyse(embeddings, PredictConfig(contamination=0.3))
    assert analysis.flags().mean() == pytest.approx(0.3, abs=0.01)
    assert "contamination 30%" in analysis.threshold_source


def test_report_map_equals_full_recompute_and_beats_chance(embeddings):
    analysis = analyse(embeddings)
    report = analysis.report()
    rows = analysis.predictions()
    assert report["MAP@5"] == pytest.approx(map_at_k(list(analysis.truth), rows))
    assert report["MAP@5"] == pytest.approx(float(analysis.sweep.map_at(analysis.threshold)))
    assert report["MAP@5"] > 0.7  # chance is about 0.1 with 20 classes
    assert report["mP@5"] > 0.7
    assert report["distractor_roc_auc"] > 0.9


def test_predictions_have_minus_one_first_for_flagged(embeddings):
    analysis = analyse(embeddings)
    flags = analysis.flags()
    for row, flag in zip(analysis.predictions(), flags):
        assert len(row) == 5
        assert (row[0] == "-1") == flag
        assert row.count("-1") == int(flag)


def test_auto_threshold_by_validation_is_close_to_the_best(embeddings):
    analysis = analyse(embeddings, PredictConfig(auto=True, contamination=0.3))
    assert analysis.validation is not None and analysis.validation.held_out_classes > 0
    _, best = analysis.sweep.best_map_threshold()
    assert analysis.report()["MAP@5"] > best - 0.1


def test_pseudo_split_reaches_the_contamination():
    labels = np.array([f"c{i // 3}" for i in range(300)], dtype=object)
    gallery, queries, truth, held = pseudo_distractor_split(labels, 0.3, np.random.default_rng(0))
    assert not set(gallery) & set(queries)
    assert (truth == "-1").mean() == pytest.approx(0.3, abs=0.03)
    assert set(labels[gallery]) >= set(truth[truth != "-1"])


def test_without_truth_only_counts_are_reported():
    analysis = analyse(clustered_embeddings(truth=False), PredictConfig(threshold=0.5))
    report = analysis.report()
    assert analysis.truth is None and "MAP@5" not in report
    assert report["flagged"] == int((analysis.scores < 0.5).sum())


def test_fewer_classes_than_k_gives_short_rows_and_a_note():
    emb = clustered_embeddings(n_classes=3, n_distractor_classes=1)
    analysis = analyse(emb)
    assert any("fewer than k=5" in note for note in analysis.notes)
    rows = analysis.predictions()
    assert {len(row) - (row[0] == "-1") for row in rows} == {3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(contamination=1.2), "contamination must be a share"),
        (dict(threshold=0.5, auto=True), "either a fixed threshold or auto"),
        (dict(score_mode="median"), "score_mode must be one of"),
        (dict(k=0), "k must be at least 1"),
        (dict(threshold=3.0), "cosine similarity in"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredictConfig(**kwargs)


def test_empty_splits_are_explained(embeddings):
    with pytest.raises(ValueError, match="test split is empty"):
        analyse(embeddings.subset("train"))
    with pytest.raises(ValueError, match="train split is empty"):
        analyse(embeddings.subset("test"))


def test_train_label_and_held_out_class_rules_name_what_is_wrong():
    with pytest.raises(ValueError, match=r'not None, not "-1"\); 2 lack one, the first at row 1'):
        check_train_labels(np.array(["a", None, "-1"], dtype=object))
    with pytest.raises(ValueError, match="auto needs at least 4 train classes.*has 3 classes and at most 2 images in one — use x"):
        check_classes_to_hold_out(np.array(["a", "a", "b", "c"], dtype=object), "auto", "use x")
    with pytest.raises(ValueError, match="has 4 classes and at most 1 images in one"):
        check_classes_to_hold_out(np.array(["a", "b", "c", "d"], dtype=object), "auto", "use x")
    check_classes_to_hold_out(np.array(["a", "a", "b", "c", "d"], dtype=object), "auto", "use x")
