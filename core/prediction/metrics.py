"""Scores of predictions: MAP@k (Kaggle), mP@k (Google Universal Image Embedding) and top-1 accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
