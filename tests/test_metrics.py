import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.detection.metrics import distractor_report
from core.prediction.metrics import (
    average_precision_at_k,
    map_at_k,
    mean_precision_at_k,
    top1_accuracy,
)


@pytest.mark.parametrize(
    "truth, predicted, expected",
    [
        ("a", ["a", "b", "c", "d", "e"], 1.0),
        ("c", ["a", "b", "c", "d", "e"], 1 / 3),
        ("z", ["a", "b", "c", "d", "e"], 0.0),
        ("e", ["a", "b", "c", "d", "e"], 1 / 5),
        ("f", ["a", "b", "c", "d", "e", "f"], 0.0),  # beyond k
        ("-1", ["-1", "a", "b", "c", "d"], 1.0),
        ("b", ["a"], 0.0),  # short row
        ("b", [], 0.0),
        ("b", ["a", "a", "b"], 1 / 3),  # a repeated label still takes a rank
    ],
)
def test_average_precision_hand_computed(truth, predicted, expected):
    assert average_precision_at_k(truth, predicted, 5) == pytest.approx(expected)


def test_map_at_k_is_mean_of_rows():
    truth = ["a", "b", "-1", "d"]
    rows = [["a"], ["x", "b"], ["y", "z", "-1"], ["q"]]
    assert map_at_k(truth, rows) == pytest.approx((1 + 0.5 + 1 / 3 + 0) / 4)


def test_map_rejects_misaligned_and_bad_k():
    with pytest.raises(ValueError, match="2 true labels but 1 prediction rows"):
        map_at_k(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="k must be a positive whole number"):
        map_at_k(["a"], [["a"]], k=0)
    with pytest.raises(ValueError, match="0 rows"):
        map_at_k([], [])


def test_mean_precision_at_k_skips_distractors_and_caps_by_relevant_count():
    # Query 1: 2 relevant items, first 2 neighbours: one hit → 1/2.  Query 2: 5+ relevant, 3 hits of 5.
    labels = ["a", "b", "-1"]
    neighbours = [["a", "x", "a", "a", "a"], ["b", "b", "x", "b", "y"], ["a", "a", "a", "a", "a"]]
    assert mean_precision_at_k(labels, neighbours, [2, 7, 0]) == pytest.approx((0.5 + 0.6) / 2)
    with pytest.raises(ValueError, match="no query has a relevant item"):
        mean_precision_at_k(["-1"], [["a"]], [0])


def test_top1_accuracy_handles_empty_rows():
    assert top1_accuracy(["a", "b", "c"], [["a", "b"], [], ["x", "c"]]) == pytest.approx(1 / 3)


def test_distractor_report_counts_and_auc():
    truth = np.array([True, True, False, False, False])
    flags = np.array([True, False, True, False, False])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    report = distractor_report(truth, flags, scores)
    assert (report.flagged, report.actual) == (2, 2)
    assert report.precision == pytest.approx(0.5) and report.recall == pytest.approx(0.5)
    assert report.f1 == pytest.approx(0.5)
    assert report.roc_auc == pytest.approx(1.0)
    assert distractor_report(np.zeros(3, bool), np.zeros(3, bool), np.ones(3)).roc_auc is None


@given(
    st.lists(st.sampled_from([*list("abcdef"), "-1"]), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=7),
    st.randoms(use_true_random=False),
)
def test_map_is_a_share_and_perfect_when_truth_first(truth, k, rnd):
    rows = [rnd.sample([*list("abcdef"), "-1"], 5) for _ in truth]
    value = map_at_k(truth, rows, k)
    assert 0.0 <= value <= 1.0
    assert map_at_k(truth, [[t, *r] for t, r in zip(truth, rows)], k) == 1.0
