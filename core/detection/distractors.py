"""Distractor detection: similarity scores, contamination ↔ threshold, a fast threshold sweep, and DBSCAN."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import DBSCAN

from core.detection.metrics import precision_recall_f1
from core.search.index import Neighbours, nearest_others

SCORE_MODES = ("max", "mean")
# MAP@k values this close to the best count as the best: sums of the same terms in a different order
# differ in their last bits, and that must not split one plateau into several.
PLATEAU_TOLERANCE = 1e-12


def distractor_scores(neighbours: Neighbours, mode: str = "max", k: int = 5) -> np.ndarray:
    """Score per query: its best cosine similarity to train ("max") or the mean of its top-k."""
    if mode not in SCORE_MODES:
        raise ValueError(f"score mode must be one of {SCORE_MODES}, got {mode!r}")
    if mode == "max":
        return neighbours.similarities[:, 0].astype(np.float64)
    if k < 1:
        raise ValueError(f"k for the mean score must be at least 1, got {k}")
    return neighbours.similarities[:, : min(k, neighbours.k)].mean(axis=1).astype(np.float64)


def leave_one_out_neighbours(train_vectors: np.ndarray, depth: int) -> Neighbours:
    """Each train item's top `depth` neighbours among the other train items (fewer when train is smaller)."""
    return nearest_others(train_vectors, depth)


def leave_one_out_scores_of(neighbours: Neighbours, mode: str = "max", k: int = 5) -> np.ndarray:
    """Train items' scores from their leave-one-out neighbours; NaN when train has no other item to meet."""
    if neighbours.k == 0:
        return np.full(neighbours.indices.shape[0], np.nan)
    return distractor_scores(neighbours, mode, k)


def leave_one_out_scores(train_vectors: np.ndarray, mode: str = "max", k: int = 5) -> np.ndarray:
    """Each train item's score against the other train items: what a kept test item tends to score."""
    return leave_one_out_scores_of(leave_one_out_neighbours(train_vectors, k), mode, k)


def _check_share(contamination: float) -> None:
    if not 0.0 <= contamination <= 1.0:
        raise ValueError(f"contamination must be a share between 0 and 1, got {contamination}")


def _like_threshold(threshold, values):
    """`values` as Python numbers for a scalar threshold, as arrays for an array of thresholds."""
    return np.asarray(values).item() if np.ndim(threshold) == 0 else values


class ThresholdSweep:
    """Everything that follows a threshold, answered in O(log n) from scores sorted once.

    Items scoring below the threshold are flagged. With per-item average precision for both
    verdicts (`ap_if_flagged`, `ap_if_kept`) MAP@k follows; with truth, precision/recall/F1.
    Every query takes one threshold or an array of them and answers in kind: a plain Python
    int or float for one threshold, a NumPy array of the same shape for an array.
    """

    def __init__(
        self,
        scores: np.ndarray,
        ap_if_flagged: np.ndarray | None = None,
        ap_if_kept: np.ndarray | None = None,
        is_distractor: np.ndarray | None = None,
    ):
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError("the sweep needs a non-empty 1-D array of test scores")
        if not np.all(np.isfinite(scores)):
            raise ValueError("test scores contain NaN or infinite values")
        self.order = np.argsort(scores, kind="stable")
        self.sorted_scores = scores[self.order]
        self.n = scores.size

        def cumulative(values):
            return (
                None
                if values is None
                else np.concatenate(([0.0], np.cumsum(np.asarray(values, np.float64)[self.order])))
            )

        self._flagged_ap = cumulative(ap_if_flagged)
        self._kept_ap = cumulative(ap_if_kept)
        self._distractors = cumulative(
            None if is_distractor is None else np.asarray(is_distractor, bool)
        )

    @property
    def has_map(self) -> bool:
        return self._flagged_ap is not None and self._kept_ap is not None

    @property
    def has_truth(self) -> bool:
        return self._distractors is not None

    def flagged_count(self, threshold):
        """How many items score strictly below the threshold."""
        return _like_threshold(threshold, self._flagged(threshold))

    def _flagged(self, threshold) -> np.ndarray:
        return np.searchsorted(self.sorted_scores, threshold, side="left")

    def contamination(self, threshold):
        """Share of items flagged at the threshold."""
        return _like_threshold(threshold, self._flagged(threshold) / self.n)

    def threshold_for(self, contamination: float) -> float:
        """The threshold that flags the given share of items (the inverse of `contamination`)."""
        _check_share(contamination)
        # int(): numpy 1.x rounds a float64 to a float64.
        flagged = int(round(contamination * self.n))  # noqa: RUF046
        if flagged >= self.n:
            return float(np.nextafter(self.sorted_scores[-1], np.inf))
        return float(self.sorted_scores[flagged])

    def map_at(self, threshold):
        if not self.has_map:
            raise ValueError("MAP@k needs test truth")
        flagged = self._flagged(threshold)
        kept_total = self._kept_ap[-1]
        return _like_threshold(
            threshold, (self._flagged_ap[flagged] + kept_total - self._kept_ap[flagged]) / self.n
        )

    def detection_at(self, threshold):
        """(precision, recall, F1) of the flags against the known distractors."""
        if not self.has_truth:
            raise ValueError("precision/recall need test truth")
        flagged = self._flagged(threshold)
        return precision_recall_f1(self._distractors[flagged], flagged, self._distractors[-1])

    def grid(self, points: int = 201) -> np.ndarray:
        """Thresholds spanning the scores, for curves."""
        low, high = self.sorted_scores[0], self.sorted_scores[-1]
        pad = max((high - low) * 0.02, 1e-6)
        return np.linspace(low - pad, high + pad, points)

    def best_map_threshold(self) -> tuple[float, float]:
        """The threshold with the highest MAP@k, and that MAP@k: the one answer every page and report gives.

        MAP@k only changes where a score is crossed, so it is tried at every distinct score and just
        above the highest; each try stands for all thresholds from the previous distinct score (open)
        up to it. Values within PLATEAU_TOLERANCE of the maximum form the plateau, often a range of
        thresholds wide. The answer is the middle of the widest range on the plateau (in score units;
        of equally wide ones, the lowest): the threshold furthest from a verdict change, so the one
        least sensitive to noise in the scores, where the lowest would sit right at the plateau's edge.
        """
        distinct = np.unique(self.sorted_scores)
        tried = np.append(distinct, np.nextafter(distinct[-1], np.inf))
        values = self.map_at(tried)
        on_plateau = np.concatenate(([0], values >= values.max() - PLATEAU_TOLERANCE, [0])).astype(
            np.int8
        )
        starts = np.flatnonzero(np.diff(on_plateau) == 1)
        ends = np.flatnonzero(np.diff(on_plateau) == -1) - 1
        # Thresholds below the lowest score flag nothing, like the lowest: a range starting there starts at it.
        lows = tried[np.maximum(starts - 1, 0)]
        widest = int(np.argmax(tried[ends] - lows))
        low, high = lows[widest], tried[ends[widest]]
        middle = low + (high - low) / 2
        # A range one float wide has no middle above its open lower end: its upper end is the answer then.
        if middle <= low and starts[widest] > 0:
            middle = high
        return float(middle), float(self.map_at(middle))


@dataclass(frozen=True)
class DbscanConfig:
    """DBSCAN as a second detector: test items in clusters without any train item."""

    eps: float = field(
        default=0.15, metadata={"help": "cosine distance (1 - similarity) that joins two points"}
    )
    min_samples: int = field(default=3, metadata={"help": "points needed to form a dense core"})
    noise_is_distractor: bool = field(
        default=False, metadata={"help": "count points in no cluster as distractors"}
    )

    def __post_init__(self):
        if not 0.0 < self.eps <= 2.0:
            raise ValueError(f"eps is a cosine distance in (0, 2], got {self.eps}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {self.min_samples}")


def dbscan_flags(
    train_vectors: np.ndarray, test_vectors: np.ndarray, config: DbscanConfig = DbscanConfig()
) -> np.ndarray:
    """Flag test items whose DBSCAN cluster (fitted on train and test together) has no train member."""
    if test_vectors.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    vectors = np.vstack([train_vectors, test_vectors]).astype(np.float32)
    # On unit vectors, Euclidean distance² = 2 × cosine distance: Euclidean avoids a dense cosine matrix.
    labels = DBSCAN(eps=float(np.sqrt(2 * config.eps)), min_samples=config.min_samples).fit_predict(
        vectors
    )
    n_train = train_vectors.shape[0]
    clusters_with_train = set(labels[:n_train].tolist()) - {-1}
    test_labels = labels[n_train:]
    in_train_cluster = np.isin(test_labels, list(clusters_with_train))
    noise = test_labels == -1
    return np.where(noise, config.noise_is_distractor, ~in_train_cluster)
