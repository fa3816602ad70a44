"""How well flags match the known distractors: precision, recall, F1 and the ROC AUC of the scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


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
