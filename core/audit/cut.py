"""The near-duplicate cut chosen from the data: past what the same-class similarities reach by chance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

# Below this many similarities the same-class mode cannot be told from noise: the write-ups' cut is used.
MIN_SIMILARITIES = 30
# A write-up drops near-duplicate prompts above cosine 0.95: the cut chosen from the data is never
# below it, as a small or loosely clustered set can put the chance level of its same-class tail lower.
FALLBACK_CUT = 0.95
# The cut is where fewer than this many images of the same-class mode would reach by chance.
CHANCE_IMAGES = 0.5
# Similarities are compared as -log(1 - s), where near-duplicates (0.99, 0.999) spread apart; a
# similarity of 1 (an exact copy) is read as this close to 1, so the log stays finite.
_NEAREST_TO_ONE = 1e-7
_MODE_GRID = 512  # bins the density of the log distances is read at
# The upper half of a normal lies within 0.6745 standard deviations of its mode, half the time.
_HALF_NORMAL_MEDIAN = norm.ppf(0.75)


@dataclass(frozen=True)
class Cut:
    """A near-duplicate cut and how it was chosen."""

    value: float  # cosine similarity at or above which two images are near-duplicates
    source: str  # how it was chosen, for people
    same_class_mode: (
        float | None
    )  # where the best similarities peak (cosine); None when not measured
    duplicate_mode: float | None  # where those at or above the cut peak; None when none is


def closeness(similarities) -> np.ndarray:
    """-log(1 - s): the scale on which near-duplicate similarities are told apart."""
    clipped = np.clip(np.asarray(similarities, np.float64), -1.0, 1.0 - _NEAREST_TO_ONE)
    return -np.log1p(-clipped)


def similarity_at(closeness_value: float) -> float:
    return float(-np.expm1(-closeness_value))


def _mode(values: np.ndarray) -> float:
    """The peak of a Gaussian kernel density estimate of `values` (Scott's bandwidth), binned on _MODE_GRID points."""
    if np.ptp(values) == 0:
        return float(values[0])
    counts, edges = np.histogram(values, _MODE_GRID)
    bandwidth = 1.06 * float(values.std()) * len(values) ** -0.2 / (edges[1] - edges[0])
    reach = min(int(np.ceil(4 * bandwidth)), (_MODE_GRID - 1) // 2)
    offsets = np.arange(-reach, reach + 1)
    density = np.convolve(counts, np.exp(-0.5 * (offsets / max(bandwidth, 1e-9)) ** 2), "same")
    centres = (edges[:-1] + edges[1:]) / 2
    return float(centres[np.argmax(density)])


def choose_cut(best_similarities, what: str, fixed: float | None = None) -> Cut:
    """The cut for these best similarities (`what` they are, for people), or the `fixed` one the user gave.

    On the -log(1 - s) scale the best similarities of images of known classes peak at a same-class
    mode and fall off like a normal's upper tail; copies of an image sit far above it. The cut is
    where that tail expects fewer than CHANCE_IMAGES of these n images: the mode plus z standard
    deviations, z the normal quantile of 1 - CHANCE_IMAGES / n, the spread read from the upper half
    (its median distance from the mode), which distractors below the mode cannot widen.
    """
    similarities = np.asarray(best_similarities, np.float64).ravel()
    # an image without a candidate to compare with has no best similarity (-inf)
    values = closeness(similarities[np.isfinite(similarities)])
    mode = _mode(values) if len(values) else None
    peak = None if mode is None else similarity_at(mode)
    if fixed is not None:
        return _with_duplicate_mode(fixed, "given", peak, values)
    if len(values) < MIN_SIMILARITIES:
        source = f"{FALLBACK_CUT}, the write-ups' (fewer than {MIN_SIMILARITIES} {what} to choose one from)"
        return _with_duplicate_mode(FALLBACK_CUT, source, peak, values)
    above = values[values > mode] - mode
    spread = float(np.median(above)) / _HALF_NORMAL_MEDIAN if len(above) else 0.0
    z = float(norm.isf(CHANCE_IMAGES / len(values)))
    chance = similarity_at(mode + z * spread)
    value = min(max(chance, FALLBACK_CUT), 1.0 - _NEAREST_TO_ONE)
    source = (
        f"chosen from the data: the {what} peak at {peak:.3f}, and fewer than "
        f"{CHANCE_IMAGES} of {len(values):,} would reach {chance:.4f} by chance"
        + ("" if chance >= FALLBACK_CUT else f"; the write-ups' {FALLBACK_CUT} is higher")
    )
    return _with_duplicate_mode(value, source, peak, values)


def _with_duplicate_mode(value: float, source: str, peak: float | None, values: np.ndarray) -> Cut:
    duplicates = values[values >= closeness(value)]
    return Cut(
        float(value),
        source,
        peak,
        similarity_at(float(np.median(duplicates))) if len(duplicates) else None,
    )
