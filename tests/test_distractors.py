import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.retrieval.distractors import (
    DbscanConfig,
    ThresholdSweep,
    dbscan_flags,
    distractor_scores,
    leave_one_out_scores,
)
from core.retrieval.index import Neighbours


def test_scores_max_and_mean():
    neighbours = Neighbours(np.array([[0.9, 0.5, 0.1], [0.4, 0.4, 0.1]], np.float32), np.zeros((2, 3), np.int64))
    np.testing.assert_allclose(distractor_scores(neighbours, "max"), [0.9, 0.4], atol=1e-6)
    np.testing.assert_allclose(distractor_scores(neighbours, "mean", k=2), [0.7, 0.4], atol=1e-6)
    with pytest.raises(ValueError, match="score mode must be one of"):
        distractor_scores(neighbours, "median")


def test_contamination_and_its_inverse_hand_computed():
    sweep = ThresholdSweep(np.array([0.9, 0.5, 0.7, 0.3, 0.8, 0.6, 0.2, 0.95, 0.85, 0.75]))
    assert sweep.contamination(0.55) == pytest.approx(0.3)  # 0.2, 0.3, 0.5 are below
    assert sweep.threshold_for(0.3) == pytest.approx(0.6)
    assert sweep.contamination(sweep.threshold_for(0.3)) == pytest.approx(0.3)
    assert sweep.contamination(sweep.threshold_for(0.0)) == 0.0
    assert sweep.contamination(sweep.threshold_for(1.0)) == 1.0
    with pytest.raises(ValueError, match="between 0 and 1, got 1.5"):
        sweep.threshold_for(1.5)


def test_sweep_map_and_detection_equal_a_full_recompute():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    if_flagged, if_kept = rng.random(200), rng.random(200)
    truth = rng.random(200) < 0.3
    sweep = ThresholdSweep(scores, if_flagged, if_kept, truth)
    for t in (0.0, 0.25, 0.5, 0.77, 1.01):
        flags = scores < t
        assert sweep.map_at(t) == pytest.approx(np.where(flags, if_flagged, if_kept).mean())
        tp = (flags & truth).sum()
        precision = tp / flags.sum() if flags.sum() else 0.0
        recall = tp / truth.sum()
        assert sweep.detection_at(t)[0] == pytest.approx(precision)
        assert sweep.detection_at(t)[1] == pytest.approx(recall)
    best_t, best_map = sweep.best_map_threshold()
    assert best_map == pytest.approx(sweep.map_at(best_t))
    assert best_map >= max(sweep.map_at(sweep.grid(101)))


def test_sweep_answers_a_scalar_threshold_with_plain_numbers_and_an_array_with_arrays():
    sweep = ThresholdSweep(np.array([0.2, 0.4, 0.6]), np.ones(3), np.zeros(3), np.array([True, False, False]))
    one = (sweep.flagged_count(0.5), sweep.contamination(0.5), sweep.map_at(0.5), *sweep.detection_at(0.5))
    assert [type(value) for value in one] == [int, float, float, float, float, float]
    assert one == (2, pytest.approx(2 / 3), pytest.approx(2 / 3), 0.5, 1.0, pytest.approx(2 / 3))
    thresholds = np.array([0.1, 0.5])
    many = (sweep.flagged_count(thresholds), sweep.contamination(thresholds), sweep.map_at(thresholds), *sweep.detection_at(thresholds))
    assert all(isinstance(value, np.ndarray) and value.shape == (2,) for value in many)
    np.testing.assert_array_equal(many[0], [0, 2])


def test_sweep_without_truth_refuses_metrics():
    sweep = ThresholdSweep(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="needs test truth"):
        sweep.map_at(0.5)
    with pytest.raises(ValueError, match="NaN"):
        ThresholdSweep(np.array([0.1, np.nan]))


@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=50), st.floats(0, 1))
def test_threshold_for_flags_the_requested_share(values, share):
    sweep = ThresholdSweep(np.array(values))
    flagged = sweep.flagged_count(sweep.threshold_for(share))
    target = round(share * len(values))
    if len(set(values)) == len(values):
        assert flagged == target
    else:  # ties can only move whole groups of equal scores
        assert flagged <= target or flagged == len(values)


def test_leave_one_out_excludes_self_even_with_duplicates():
    base = np.eye(4, dtype=np.float32)
    train = np.vstack([base, base[:1]])  # row 4 duplicates row 0
    scores = leave_one_out_scores(train)
    assert scores[0] == pytest.approx(1.0) and scores[4] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)


def clusters(rng, centres, n, spread=0.05):
    points = np.repeat(centres, n, axis=0) + spread * rng.normal(size=(len(centres) * n, centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_dbscan_flags_clusters_without_train_members():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:6]
    train = clusters(rng, centres[:4], 3)
    known_test, distractor_test = clusters(rng, centres[:4], 5), clusters(rng, centres[4:], 5)
    flags = dbscan_flags(train, np.vstack([known_test, distractor_test]), DbscanConfig(eps=0.1, min_samples=3))
    assert not flags[:20].any()
    assert flags[20:].all()


def test_dbscan_config_is_validated():
    with pytest.raises(ValueError, match="eps is a cosine distance"):
        DbscanConfig(eps=0)
    with pytest.raises(ValueError, match="min_samples"):
        DbscanConfig(min_samples=0)
