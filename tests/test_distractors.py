import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.detection.distractors import (
    DbscanConfig,
    ThresholdSweep,
    dbscan_flags,
    distractor_scores,
    leave_one_out_scores,
)
from core.search.index import Neighbours


def test_scores_max_and_mean():
    neighbours = Neighbours(
        np.array([[0.9, 0.5, 0.1], [0.4, 0.4, 0.1]], np.float32), np.zeros((2, 3), np.int64)
    )
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
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1.5"):
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


def plateau_sweep(scores, best_flagged) -> ThresholdSweep:
    """A sweep whose MAP@k is 1 exactly when the items in ``best_flagged`` are flagged and the rest kept."""
    scores = np.asarray(scores, dtype=float)
    flag = np.isin(scores, best_flagged)
    return ThresholdSweep(scores, flag.astype(float), (~flag).astype(float))


@pytest.mark.parametrize(
    ("scores", "best_flagged", "expected"),
    [
        ([0.1, 0.2, 0.4, 0.6, 0.8], [0.1, 0.2, 0.4], 0.5),  # best for any threshold in (0.4, 0.6]
        ([0.1, 0.5, 0.9], [], 0.1),  # flag nothing: the lowest score, which flags nothing
        (
            [0.1, 0.5, 0.9],
            [0.1, 0.5, 0.9],
            np.nextafter(0.9, 1),
        ),  # flag everything: just above the highest
    ],
    ids=["plateau between two scores", "flag nothing", "flag everything"],
)
def test_the_best_threshold_is_the_middle_of_the_plateau(scores, best_flagged, expected):
    threshold, best = plateau_sweep(scores, best_flagged).best_map_threshold()
    assert (threshold, best) == (pytest.approx(expected), 1.0)


def test_the_widest_of_several_plateaus_wins():
    sweep = ThresholdSweep(
        np.array([0.3, 0.4, 0.5, 0.9]),
        np.array([1.0, 1.0, 0.0, 1.0]),
        np.array([0.0, 0.0, 1.0, 0.0]),
    )
    # MAP@k 0.75 on (0.4, 0.5] and above 0.9, where the range is one float wide (everything flagged).
    np.testing.assert_allclose(
        sweep.map_at(np.array([0.35, 0.45, 0.7, 0.95])), [0.5, 0.75, 0.5, 0.75]
    )
    assert sweep.best_map_threshold() == (pytest.approx(0.45), pytest.approx(0.75))


def test_equally_wide_plateaus_go_to_the_lowest():
    # Scores exact in binary, so both ranges are exactly 0.125 wide: (0.125, 0.25] and (0.375, 0.5].
    sweep = ThresholdSweep(
        np.array([0.125, 0.25, 0.375, 0.5]),
        np.array([1.0, 0.0, 1.0, 0.0]),
        np.array([0.0, 1.0, 0.0, 1.0]),
    )
    np.testing.assert_allclose(sweep.map_at(np.array([0.2, 0.3, 0.45])), [0.75, 0.5, 0.75])
    assert sweep.best_map_threshold() == (0.1875, 0.75)


def test_map_values_within_the_tolerance_form_one_plateau():
    # Flagging 0.1 alone and flagging 0.1 and 0.2 differ by 2.5e-14 in MAP@k: one plateau, (0.1, 0.6].
    sweep = ThresholdSweep(
        np.array([0.1, 0.2, 0.6, 0.7]),
        np.array([1.0, 1e-13, 0.0, 0.0]),
        np.array([0.0, 0.0, 1.0, 1.0]),
    )
    assert sweep.map_at(0.4) - sweep.map_at(0.15) == pytest.approx(2.5e-14)
    # not 0.4, the middle of (0.2, 0.6] alone
    assert sweep.best_map_threshold()[0] == pytest.approx(0.35)


def test_a_plateau_one_float_wide_answers_its_upper_end():
    low = 0.5
    high = np.nextafter(low, 1)
    sweep = plateau_sweep([0.2, low, high, 0.9], [0.2, low])
    threshold, best = sweep.best_map_threshold()
    assert (threshold, best) == (high, 1.0)
    assert sweep.flagged_count(threshold) == 2


def test_sweep_answers_a_scalar_threshold_with_plain_numbers_and_an_array_with_arrays():
    sweep = ThresholdSweep(
        np.array([0.2, 0.4, 0.6]), np.ones(3), np.zeros(3), np.array([True, False, False])
    )
    one = (
        sweep.flagged_count(0.5),
        sweep.contamination(0.5),
        sweep.map_at(0.5),
        *sweep.detection_at(0.5),
    )
    assert [type(value) for value in one] == [int, float, float, float, float, float]
    assert one == (2, pytest.approx(2 / 3), pytest.approx(2 / 3), 0.5, 1.0, pytest.approx(2 / 3))
    thresholds = np.array([0.1, 0.5])
    many = (
        sweep.flagged_count(thresholds),
        sweep.contamination(thresholds),
        sweep.map_at(thresholds),
        *sweep.detection_at(thresholds),
    )
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
    points = np.repeat(centres, n, axis=0) + spread * rng.normal(
        size=(len(centres) * n, centres.shape[1])
    )
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_dbscan_flags_clusters_without_train_members():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:6]
    train = clusters(rng, centres[:4], 3)
    known_test, distractor_test = clusters(rng, centres[:4], 5), clusters(rng, centres[4:], 5)
    flags = dbscan_flags(
        train, np.vstack([known_test, distractor_test]), DbscanConfig(eps=0.1, min_samples=3)
    )
    assert not flags[:20].any()
    assert flags[20:].all()


def test_dbscan_config_is_validated():
    with pytest.raises(ValueError, match="eps is a cosine distance"):
        DbscanConfig(eps=0)
    with pytest.raises(ValueError, match="min_samples"):
        DbscanConfig(min_samples=0)
