"""Scores: MAP@k (Kaggle), mP@k (Google Universal Image Embedding), top-1 accuracy and distractor detection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}")


def _check_aligned(truth: Sequence, predictions: Sequence) -> None:
    if len(truth) != len(predictions):
        raise ValueError(
            f"{len(truth)} true labels but {len(predictions)} prediction rows; they must match"
        )
    if len(truth) == 0:
        raise ValueError("nothing to score: 0 rows")


def average_precision_at_k(truth: str, predicted: Sequence[str], k: int = 5) -> float:
    """1/rank of the first correct label within the first k, else 0 (one true label per image).

    A label repeated before the correct one still takes a rank, as in Kaggle's implementation.
    """
    _check_k(k)
    for rank, label in enumerate(list(predicted)[:k], start=1):
        if label == truth:
            return 1.0 / rank
    return 0.0


def map_at_k(truth: Sequence[str], predictions: Sequence[Sequence[str]], k: int = 5) -> float:
    """Mean average precision at k over images; a distractor's truth is "-1"."""
    _check_k(k)
    _check_aligned(truth, predictions)
    return float(np.mean([average_precision_at_k(t, p, k) for t, p in zip(truth, predictions)]))


def mean_precision_at_k(
    query_labels: Sequence[str],
    neighbour_labels: Sequence[Sequence[str]],
    relevant_counts: Sequence[int],
    k: int = 5,
) -> float:
    """mP@k as in the Google Universal Image Embedding competition.

    For each query, the share of its first min(n_q, k) neighbours that share its label, where n_q
    is how many indexed items carry that label; queries with n_q = 0 (distractors) are skipped.
    """
    _check_k(k)
    _check_aligned(query_labels, neighbour_labels)
    if len(relevant_counts) != len(query_labels):
        raise ValueError("relevant_counts must have one entry per query")
    precisions = []
    for label, neighbours, n_relevant in zip(query_labels, neighbour_labels, relevant_counts):
        if n_relevant <= 0:
            continue
        cutoff = min(int(n_relevant), k)
        hits = sum(1 for neighbour in list(neighbours)[:cutoff] if neighbour == label)
        precisions.append(hits / cutoff)
    if not precisions:
        raise ValueError("mP@k is undefined: no query has a relevant item in the index")
    return float(np.mean(precisions))


def top1_accuracy(truth: Sequence[str], predictions: Sequence[Sequence[str]]) -> float:
    """Share of images whose first predicted label is the true one."""
    _check_aligned(truth, predictions)
    return float(np.mean([bool(p) and p[0] == t for t, p in zip(truth, predictions)]))


@dataclass(frozen=True)
class DistractorReport:
    """How well flagged items match the known distractors."""

    flagged: int  # items flagged as distractors
    actual: int  # items that truly are distractors
    precision: float  # flagged items that are distractors / flagged
    recall: float  # distractors flagged / all distractors
    f1: float
    # of the score ranking (low score = distractor); None without both classes
    roc_auc: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def precision_recall_f1(true_positives, flagged, actual):
    """Precision, recall and F1 from counts (0 where undefined): floats from single counts, arrays element-wise."""
    tp, flagged, actual = (
        np.asarray(v, dtype=np.float64) for v in (true_positives, flagged, actual)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(flagged > 0, tp / flagged, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if precision.ndim == 0:
        return float(precision), float(recall), float(f1)
    return precision, recall, f1


def distractor_report(
    is_distractor: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None = None
) -> DistractorReport:
    """Precision/recall/F1 of the flags, and ROC-AUC of the scores when given."""
    is_distractor = np.asarray(is_distractor, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    if is_distractor.shape != flagged.shape:
        raise ValueError(
            f"truth has {is_distractor.shape[0]} items but flags have {flagged.shape[0]}"
        )
    tp = int(np.sum(is_distractor & flagged))
    precision, recall, f1 = precision_recall_f1(tp, flagged.sum(), is_distractor.sum())
    auc = None
    if scores is not None and 0 < is_distractor.sum() < len(is_distractor):
        auc = float(roc_auc_score(is_distractor, -np.asarray(scores, dtype=np.float64)))
    return DistractorReport(
        int(flagged.sum()),
        int(is_distractor.sum()),
        float(precision),
        float(recall),
        float(f1),
        auc,
    )
