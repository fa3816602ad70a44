import numpy as np
import pytest

from core.analysis.pipeline import analyse
from core.prediction.config import PredictConfig
from core.prediction.metrics import map_at_k
from core.prediction.placement import MAX_K
from core.prediction.validation import (
    check_classes_to_hold_out,
    check_train_labels,
    pseudo_distractor_split,
)
from core.records import Embeddings


def clustered_embeddings(
    seed=0,
    n_classes=20,
    n_distractor_classes=8,
    train_per_class=3,
    test_per_class=4,
    dim=32,
    spread=0.35,
    truth=True,
):
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


def test_a_split_in_one_run_of_rows_is_a_view_and_an_interleaved_one_a_copy_of_the_same_items(
    embeddings,
):
    train = embeddings.subset("train")
    assert np.shares_memory(train.vectors, embeddings.vectors)
    order = np.random.default_rng(1).permutation(len(embeddings.ids))
    shuffled = Embeddings(
        embeddings.ids[order],
        embeddings.splits[order],
        embeddings.labels[order],
        embeddings.vectors[order],
        embeddings.model,
    )
    mixed = shuffled.subset("train")
    assert not np.shares_memory(mixed.vectors, shuffled.vectors)
    for split in ("train", "test"):
        ours, theirs = embeddings.subset(split), shuffled.subset(split)
        by_id = {item: row for row, item in enumerate(theirs.ids)}
        rows = [by_id[item] for item in ours.ids]
        assert set(ours.splits) == {split} and len(rows) == len(theirs.ids)
        np.testing.assert_array_equal(ours.vectors, theirs.vectors[rows])
        assert list(ours.labels) == list(theirs.labels[rows])


def test_contamination_flags_the_requested_share(embeddings):
    analysis = analyse(embeddings, PredictConfig(contamination=0.3))
    assert analysis.flags().mean() == pytest.approx(0.3, abs=0.01)
    assert "contamination 30%" in analysis.threshold_source


def test_report_map_equals_full_recompute_and_beats_chance(embeddings):
    analysis = analyse(embeddings)
    report = analysis.report()
    rows = analysis.predictions()
    assert report.measured_map == pytest.approx(map_at_k(list(analysis.truth), rows))
    assert report.measured_map == pytest.approx(float(analysis.sweep.map_at(analysis.threshold)))
    assert report.measured_map > 0.7  # chance is about 0.1 with 20 classes
    assert report.measured.mean_precision > 0.7
    assert report.measured.detection.roc_auc > 0.9


def test_first_placement_puts_minus_one_first_for_flagged_only(embeddings):
    analysis = analyse(embeddings, PredictConfig(placement="first"))
    flags = analysis.flags()
    for row, flag in zip(analysis.predictions(), flags):
        assert len(row) == 5
        assert (row[0] == "-1") == flag
        assert row.count("-1") == int(flag)


def test_optimal_placement_keeps_flagged_first_and_places_the_rest_once_and_beats_first():
    analysis = analyse(clustered_embeddings(seed=1, spread=0.6), PredictConfig(placement="optimal"))
    flags = analysis.flags()
    rows = analysis.predictions()
    assert all(row.count("-1") <= 1 and len(row) == 5 for row in rows)
    assert all(row[0] == "-1" for row, flag in zip(rows, flags) if flag)
    assert any(row.index("-1") > 0 for row in rows if "-1" in row)
    report = analysis.report()
    assert report.measured.map_by_placement["optimal"] >= report.measured.map_by_placement["first"]
    assert report.measured_map == pytest.approx(report.measured.map_by_placement["optimal"])
    assert report.measured.map_by_placement["optimal"] == pytest.approx(
        float(analysis.sweep_for("optimal").map_at(analysis.threshold))
    )
    assert report.measured.expected_map_by_placement["optimal"] == pytest.approx(
        report.measured.map_by_placement["optimal"], abs=0.1
    )


def test_auto_threshold_by_validation_is_close_to_the_best(embeddings):
    analysis = analyse(embeddings, PredictConfig(auto=True))
    assert analysis.validation is not None and analysis.validation.held_out_classes == 20
    assert len(analysis.validation.round_thresholds) == PredictConfig().validation_rounds
    _, best = analysis.sweep.best_map_threshold()
    assert analysis.report().measured_map > best - 0.1


def test_pseudo_split_reaches_the_contamination():
    labels = np.array([f"c{i // 3}" for i in range(300)], dtype=object)
    gallery, queries, truth, _held = pseudo_distractor_split(labels, 0.3, np.random.default_rng(0))
    assert not set(gallery) & set(queries)
    assert (truth == "-1").mean() == pytest.approx(0.3, abs=0.03)
    assert set(labels[gallery]) >= set(truth[truth != "-1"])


def test_without_truth_only_counts_are_reported():
    analysis = analyse(clustered_embeddings(truth=False), PredictConfig(threshold=0.5))
    report = analysis.report()
    assert analysis.truth is None and report.measured is None and "MAP@5" not in report.as_dict()
    assert report.flagged == int((analysis.scores < 0.5).sum())


def test_fewer_classes_than_k_gives_short_rows_and_a_note():
    emb = clustered_embeddings(n_classes=3, n_distractor_classes=1)
    analysis = analyse(emb)
    assert any("fewer than k=5" in note for note in analysis.notes)
    rows = analysis.predictions(placement="first")
    assert {len(row) - (row[0] == "-1") for row in rows} == {3}
    optimal = analysis.predictions(placement="optimal")
    assert {len(row) - ("-1" in row) for row in optimal} == {3}
    assert analysis.report().measured.map_by_placement["optimal"] == pytest.approx(
        float(analysis.sweep_for("optimal").map_at(analysis.threshold))
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(contamination=1.2), "contamination must be a share"),
        (
            dict(threshold=0.5, auto=True),
            "one of threshold, auto and max_false_flag, not threshold and auto",
        ),
        (dict(auto=True, max_false_flag=0.1), "not auto and max_false_flag"),
        (dict(max_false_flag=1.0), "max_false_flag is a share"),
        (dict(placement="last"), "placement must be one of"),
        (dict(score_mode="median"), "score_mode must be one of"),
        (dict(k=0), f"k must be between 1 and {MAX_K} .*, got 0"),
        (dict(k=MAX_K + 1), f"k must be between 1 and {MAX_K} .*, got {MAX_K + 1}"),
        (dict(k=100_000), "memory grows with k"),
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
    with pytest.raises(
        ValueError,
        match=r"auto needs at least 4 train classes.*has 3 classes and at most 2 images in one — use x",
    ):
        check_classes_to_hold_out(np.array(["a", "a", "b", "c"], dtype=object), "auto", "use x")
    with pytest.raises(ValueError, match="has 4 classes and at most 1 images in one"):
        check_classes_to_hold_out(np.array(["a", "b", "c", "d"], dtype=object), "auto", "use x")
    check_classes_to_hold_out(np.array(["a", "a", "b", "c", "d"], dtype=object), "auto", "use x")


def test_auto_needs_no_contamination_and_works_with_two_train_images_and_many_classes():
    from bench.fixtures import retrieval_embeddings

    for embeddings in (
        clustered_embeddings(train_per_class=2),
        retrieval_embeddings(1500, n_classes=1000, per_class=2),
    ):
        told = [
            analyse(embeddings, PredictConfig(auto=True, contamination=share))
            for share in (0.1, 0.5)
        ]
        assert told[0].threshold == told[1].threshold  # the contamination is not used
        _, best = told[0].sweep.best_map_threshold()
        assert told[0].report().measured_map > best - 0.1
        assert abs(told[0].placement_model.contamination - 0.3) < 0.1


def test_auto_on_digits_scores_the_issue_floor_over_several_train_samples():
    from bench.quality import DIGITS_TARGET, digits_embeddings

    scores = [
        analyse(digits_embeddings(seed), PredictConfig(auto=True)).report().measured_map
        for seed in range(5)
    ]
    assert np.mean(scores) >= DIGITS_TARGET


def test_max_false_flag_is_a_split_conformal_bound_over_many_draws():
    alpha, draws, rates = 0.1, 40, []
    for seed in range(draws):
        analysis = analyse(
            clustered_embeddings(seed=seed, spread=0.6), PredictConfig(max_false_flag=alpha)
        )
        known = analysis.truth != "-1"
        rates.append(analysis.flags()[known].mean())
        assert "split conformal" in analysis.threshold_source
    known_items = int(known.sum())
    margin = 3 * np.sqrt(alpha * (1 - alpha) / (known_items * draws))
    assert np.mean(rates) <= alpha + margin
    assert np.mean(rates) > 0  # the bound is not met by flagging nothing


def test_a_folder_of_parquet_parts_loads_as_embeddings(tmp_path):
    from core.analysis.loading import is_embeddings_file, load_embeddings
    from core.io.parquet import write_embeddings

    emb = clustered_embeddings(n_classes=4, n_distractor_classes=1, dim=8)
    parts = tmp_path / "parts"
    parts.mkdir()
    for split in ("train", "test"):
        write_embeddings(parts / f"part-{split}.parquet", emb.subset(split))
    (parts / "_SUCCESS").write_text("")

    assert is_embeddings_file(parts)
    loaded = load_embeddings(parts)
    assert sorted(loaded.embeddings.ids) == sorted(emb.ids)
    assert not is_embeddings_file(tmp_path)  # a folder holding a folder is not a Parquet source


def test_auto_is_within_a_hundredth_of_being_told_the_share_across_digit_regimes():
    from bench.quality import digits_regime

    auto, told, blind = [], [], []
    for per_class in (3, 5):
        for share in (0.1, 0.3, 0.5):
            for seed in range(2):
                embeddings = digits_regime(seed, per_class, share)
                auto.append(analyse(embeddings, PredictConfig(auto=True)).report().measured_map)
                told.append(
                    analyse(embeddings, PredictConfig(contamination=share)).report().measured_map
                )
                blind.append(
                    analyse(embeddings, PredictConfig(contamination=0.3)).report().measured_map
                )
    assert np.mean(auto) >= np.mean(told) - 0.01
    assert np.min(np.array(auto) - np.array(blind)) > -0.05  # never far below a blind 30% guess


def test_auto_falls_back_to_the_contamination_with_a_note_when_the_evidence_does_not_back_it():
    from bench.quality import digits_regime

    # Two train images of each of 7 digits: the class bootstraps disagree on what any threshold gains.
    analysis = analyse(digits_regime(12, 2, 0.1), PredictConfig(auto=True, contamination=0.3))
    assert analysis.validation.fell_back
    low, high = analysis.validation.gain_over_fallback
    assert low + high < 0
    assert analysis.flags().mean() == pytest.approx(0.3, abs=0.01)
    assert "as the evidence does not back a choice" in analysis.threshold_source
    assert any("--auto is not confident" in note for note in analysis.notes)
