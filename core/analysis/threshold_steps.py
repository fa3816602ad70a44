"""Every figure the threshold slider shows, at each of its positions at once, so a browser can follow the slider alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.analysis.pipeline import Analysis
from core.prediction.placement import NOWHERE, PLACEMENTS, expected_map_by_flags
from core.records import DISTRACTOR

# The slider's ends sit on hundredths below the lowest score and above the highest: round figures that
# bracket every score, so one end flags nothing and the other everything.
BOUND_DECIMALS = 2
# The dashboard's slider moves by 10^-3: every threshold it shows, uses and saves is on that grid.
THRESHOLD_DECIMALS = 3


def on_grid(threshold: float, decimals: int = THRESHOLD_DECIMALS, rounding=round) -> float:
    """The threshold on the slider's grid, so the slider, the figures and the saved value agree.

    `rounding` is math.floor for a bound: a lower threshold flags no more items than the one asked for."""
    scale = 10**decimals
    return rounding(threshold * scale) / scale


def slider_thresholds(scores: np.ndarray, decimals: int) -> np.ndarray:
    """The slider's positions, low to high, one 10^-decimals step apart.

    Each is the double nearest its decimal (an integer over a power of ten), the value a browser's
    range input reads back, so a threshold moved in the browser is one of these exactly."""
    if decimals < BOUND_DECIMALS:
        raise ValueError(f"decimals={decimals!r}: the slider needs at least {BOUND_DECIMALS}")
    scale, bound_scale = 10**decimals, 10**BOUND_DECIMALS
    low = math.floor(float(np.min(scores)) * bound_scale) * (scale // bound_scale)
    high = math.ceil(float(np.max(scores)) * bound_scale) * (scale // bound_scale)
    return np.arange(low, max(high, low + 1) + 1) / scale


@dataclass(frozen=True)
class ThresholdSteps:
    """What each position of the threshold slider shows, position by position (thresholds low to high)."""

    thresholds: np.ndarray  # the slider's positions (slider_thresholds)
    flagged: np.ndarray  # test items scoring below each threshold
    map_by_placement: dict[
        str, np.ndarray
    ]  # MAP@k at each threshold for each place of "-1"; empty without test truth
    # of the flags against the known distractors; None without test truth
    precision: np.ndarray | None
    recall: np.ndarray | None
    f1: np.ndarray | None
    # share of test items of known classes flagged; None without such items
    known_flagged: np.ndarray | None
    # MAP@k the placement model expects, without truth; None without a model
    expected_map: np.ndarray | None
    # where the measured MAP@k should fall (predictive_interval); None without a model
    expected_map_low: np.ndarray | None
    expected_map_high: np.ndarray | None
    minus_one_at: np.ndarray  # (thresholds, k + 1) test items with "-1" at rank 1..k, then at none

    @property
    def low(self) -> float:
        return float(self.thresholds[0])

    @property
    def high(self) -> float:
        return float(self.thresholds[-1])

    def snap(self, threshold: float, decimals: int = THRESHOLD_DECIMALS, rounding=round) -> float:
        """A threshold the slider can show: on its grid (on_grid) and within its ends."""
        return min(max(on_grid(threshold, decimals, rounding), self.low), self.high)


def threshold_steps(analysis: Analysis, decimals: int) -> ThresholdSteps:
    """All of ThresholdSteps for `analysis`, in O(n log n + positions · k) however many positions there are.

    The items a threshold flags are a prefix of the scores sorted once (the sweep's order), so every
    count and mean over flagged and kept items is a difference of prefix sums along that order."""
    thresholds = slider_thresholds(analysis.scores, decimals)
    sweep, order, k, n = (
        analysis.sweep,
        analysis.sweep.order,
        analysis.config.k,
        len(analysis.scores),
    )
    flagged = sweep.flagged_count(thresholds)

    def flagged_sum(values: np.ndarray) -> np.ndarray:
        """Per threshold, the sum of `values` over the items it flags (axis 0 of `values` is items)."""
        prefix = np.concatenate(
            (np.zeros((1, *values.shape[1:])), np.cumsum(values[order], axis=0))
        )
        return prefix[flagged]

    # "-1" goes first for flagged items; elsewhere (or nowhere) for kept ones, by the placement in use.
    kept_positions = (
        np.full(n, NOWHERE) if analysis.placement == "first" else analysis.kept_positions
    )
    kept_at = np.eye(k + 1)[kept_positions]  # items × positions 0 (nowhere), 1..k
    at_position = kept_at.sum(axis=0) - flagged_sum(kept_at)
    at_position[:, 1] += flagged
    minus_one_at = np.concatenate((at_position[:, 1:], at_position[:, :1]), axis=1).astype(np.int64)

    expected_map = expected_map_low = expected_map_high = None
    if analysis.expected_precisions is not None:
        expected_map = expected_map_by_flags(
            analysis.expected_precisions, kept_positions, order, flagged
        )
        if analysis.bootstrap:
            expected_map_low, expected_map_high = analysis.expected_map_band(
                kept_positions, order, flagged
            )

    known_flagged = None
    if analysis.truth is not None:
        known = analysis.truth != DISTRACTOR
        if known.any():
            known_flagged = flagged_sum(known.astype(np.float64)) / known.sum()
    precision = recall = f1 = None
    if sweep.has_truth:
        precision, recall, f1 = (
            np.asarray(values, np.float64) for values in sweep.detection_at(thresholds)
        )
    maps = (
        {placement: analysis.sweep_for(placement).map_at(thresholds) for placement in PLACEMENTS}
        if sweep.has_map
        else {}
    )
    return ThresholdSteps(
        thresholds,
        flagged,
        maps,
        precision,
        recall,
        f1,
        known_flagged,
        expected_map,
        expected_map_low,
        expected_map_high,
        minus_one_at,
    )
