import numpy as np
import pytest
from test_pipeline import clustered_embeddings

from core.analysis.pipeline import analyse
from core.analysis.threshold_steps import slider_thresholds, threshold_steps
from core.prediction.config import PredictConfig


@pytest.mark.parametrize("placement", ["first", "optimal"])
def test_every_position_agrees_with_the_analysis_asked_at_that_threshold(placement):
    analysis = analyse(clustered_embeddings(seed=1, spread=0.6), PredictConfig(placement=placement))
    steps = threshold_steps(analysis, 3)
    assert (
        analysis.placement == placement
        and steps.expected_map is not None
        and steps.map_by_placement
    )
    k = analysis.config.k
    # Every position, so a prefix-sum slip at any one shows.
    for row, threshold in enumerate(steps.thresholds):
        assert steps.flagged[row] == int((analysis.scores < threshold).sum())
        counts = np.bincount(analysis.positions(threshold), minlength=k + 1)
        assert steps.minus_one_at[row].tolist() == [*counts[1:], counts[0]]
        assert steps.expected_map[row] == pytest.approx(analysis.expected_map(threshold), abs=1e-12)
        assert steps.known_flagged[row] == pytest.approx(
            analysis.false_flag_share(threshold), abs=1e-12
        )
        for name in ("first", "optimal"):
            assert steps.map_by_placement[name][row] == pytest.approx(
                analysis.sweep_for(name).map_at(threshold), abs=1e-12
            )
        precision, recall, f1 = analysis.sweep.detection_at(threshold)
        assert (steps.precision[row], steps.recall[row], steps.f1[row]) == pytest.approx(
            (precision, recall, f1), abs=1e-12
        )


def test_without_truth_only_counts_and_ranks_are_given():
    analysis = analyse(clustered_embeddings(truth=False), PredictConfig(threshold=0.5))
    steps = threshold_steps(analysis, 3)
    assert steps.map_by_placement == {} and steps.precision is None and steps.known_flagged is None
    assert (steps.minus_one_at.sum(axis=1) == len(analysis.scores)).all()


def test_positions_bracket_every_score_on_the_decimal_grid():
    scores = np.array([0.6183, 0.9012, 0.7])
    thresholds = slider_thresholds(scores, 3)
    assert thresholds[0] == 0.61 and thresholds[-1] == 0.91 and len(thresholds) == 301
    # Each position is the double a browser reads back from its decimal text.
    assert all(value == float(f"{value:.3f}") for value in thresholds)
    assert (scores >= thresholds[0]).all() and (scores < thresholds[-1]).all()
    # one score still gives the slider a range
    assert len(slider_thresholds(np.array([0.5, 0.5]), 3)) == 2
    with pytest.raises(ValueError, match="decimals=1"):
        slider_thresholds(scores, 1)


def test_the_expected_map_band_at_every_position_is_the_analysis_interval_there():
    analysis = analyse(clustered_embeddings(seed=2, spread=0.6), PredictConfig())
    steps = threshold_steps(analysis, 3)
    assert steps.expected_map_low is not None and len(steps.expected_map_low) == len(
        steps.thresholds
    )
    assert (steps.expected_map_low <= steps.expected_map_high).all()
    for row in range(0, len(steps.thresholds), 7):
        low, high = analysis.expected_map_interval(steps.thresholds[row])
        assert (steps.expected_map_low[row], steps.expected_map_high[row]) == pytest.approx(
            (low, high), abs=1e-12
        )


def test_without_a_placement_model_there_is_no_band():
    from test_placement import tiny_train

    steps = threshold_steps(analyse(tiny_train(1, 6), PredictConfig(contamination=0.3)), 3)
    assert steps.expected_map is None and steps.expected_map_low is None
