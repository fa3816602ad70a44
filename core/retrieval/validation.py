"""Choosing a threshold without test truth: train labels checked, classes held out as pseudo-distractors,
class bootstraps for the automatic threshold, and the split-conformal bound on false flags."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.records import DISTRACTOR, Embeddings
from core.retrieval.placement import (
    PlacementModel,
    TrainEvidence,
    fit_placement,
    kept_positions,
    positions_for,
    realised_precisions,
    train_evidence,
)

if TYPE_CHECKING:
    from core.retrieval.pipeline import PredictConfig


@dataclass(frozen=True)
class ValidationResult:
    """The automatic threshold, learnt on train with every class held out once, and its spread over class bootstraps."""

    threshold: float  # median of the rounds' thresholds
    map_at_k: float  # validation MAP@k on train at that threshold, with "-1" placed optimally
    round_thresholds: list[
        float
    ]  # threshold of each bootstrap round (classes drawn with replacement)
    held_out_classes: int  # classes held out as distractors, one at a time
    contamination: (
        float  # distractor share the threshold is chosen for: fitted to the test scores, or given
    )


def check_train_labels(labels) -> None:
    """Refuse train labels that are missing or "-1": every gallery item must name its class."""
    missing = [row for row, label in enumerate(labels) if label is None or label == DISTRACTOR]
    if missing:
        raise ValueError(
            f'every train item needs a class label (not None, not "{DISTRACTOR}"); {len(missing)} lack one, '
            f"the first at row {missing[0]}"
        )


# Holding classes out leaves at least 2 in the gallery, so pseudo-distractors need 4+ classes to
# leave some to hold out; known queries need a class with 2+ images (one query, one in the gallery).
MIN_CLASSES_TO_HOLD_OUT = 4


def check_classes_to_hold_out(labels: np.ndarray, purpose: str, otherwise: str) -> None:
    """Refuse train labels that `pseudo_distractor_split` cannot split: too few classes, or no class with 2+ images.

    `purpose` says what needs the split and `otherwise` what the user can do instead; both are shown.
    """
    counts = Counter(labels.tolist())
    if len(counts) < MIN_CLASSES_TO_HOLD_OUT or max(counts.values(), default=0) < 2:
        raise ValueError(
            f"{purpose} needs at least {MIN_CLASSES_TO_HOLD_OUT} train classes and a class with 2+ images; "
            f"train has {len(counts)} classes and at most {max(counts.values(), default=0)} images in one — {otherwise}"
        )


def pseudo_distractor_split(labels: np.ndarray, contamination: float, rng: np.random.Generator):
    """Gallery / query rows of train: held-out classes become "-1" queries, one image of each other class a query."""
    classes = list(dict.fromkeys(labels.tolist()))
    rng.shuffle(classes)
    counts = Counter(labels.tolist())
    known_queries = sum(1 for c in classes if counts[c] >= 2)
    held, distractor_queries = set(), 0
    for cls in classes:
        if (
            distractor_queries >= contamination * (distractor_queries + known_queries)
            or len(held) >= len(classes) - 2
        ):
            break
        held.add(cls)
        distractor_queries += counts[cls]
        known_queries -= counts[cls] >= 2
    query_rows, truth, gallery_rows = [], [], []
    for cls in classes:
        rows = np.flatnonzero(labels == cls)
        if cls in held:
            query_rows.extend(rows)
            truth.extend([DISTRACTOR] * len(rows))
        elif len(rows) >= 2:
            chosen = rng.choice(rows)
            query_rows.append(chosen)
            truth.append(cls)
            gallery_rows.extend(r for r in rows if r != chosen)
        else:
            gallery_rows.extend(rows)
    return np.array(gallery_rows), np.array(query_rows), np.array(truth, dtype=object), len(held)


def evidence_for(train: Embeddings, config: PredictConfig) -> TrainEvidence:
    """Train items scored as known items (left out one at a time) and as distractors (their class left out)."""
    return train_evidence(
        train.vectors,
        train.labels.astype(object),
        config.k,
        config.score_mode,
        config.score_k,
        config.seed,
    )


def train_evidence_map(
    evidence: TrainEvidence, model: PlacementModel, threshold: float, placement: str
) -> float:
    """MAP@k on train evidence at the model's distractor share: left-out items as known, left-out classes as distractors."""
    values = []
    for scores, ranks, is_distractor in (
        (evidence.known_scores, evidence.known_ranks, False),
        (evidence.distractor_scores, np.zeros(len(evidence.distractor_scores), np.int64), True),
    ):
        positions = positions_for(
            scores < threshold, placement, kept_positions(model.expected_precisions(scores))
        )
        values.append(
            realised_precisions(
                ranks, np.full(len(scores), is_distractor), positions, evidence.k
            ).mean()
        )
    return float((1 - model.contamination) * values[0] + model.contamination * values[1])


def validate_threshold(
    train: Embeddings,
    config: PredictConfig,
    test_scores: np.ndarray | None = None,
    evidence: TrainEvidence | None = None,
) -> ValidationResult:
    """The threshold under which "-1" first has the highest expected AP@k, from train alone; no contamination needed.

    The distractor share is fitted to the test scores when they are given (config.contamination
    otherwise). Each of config.validation_rounds rounds refits on train classes drawn with
    replacement; the median of their thresholds is used, so one odd class cannot swing it.
    """
    labels = train.labels.astype(object)
    check_classes_to_hold_out(
        labels,
        "choosing the threshold by validation",
        "use a contamination rate or a fixed threshold",
    )
    evidence = evidence or evidence_for(train, config)
    share = None if test_scores is not None else config.contamination
    placed = (
        test_scores
        if test_scores is not None
        else np.concatenate([evidence.known_scores, evidence.distractor_scores])
    )
    rng = np.random.default_rng(config.seed)
    classes = np.unique(evidence.distractor_classes)
    thresholds = []
    for _ in range(config.validation_rounds):
        drawn = evidence.of_classes(rng.choice(classes, len(classes)))
        if drawn.has_known_items:
            thresholds.append(fit_placement(drawn, test_scores, share).first_below(placed))
    model = fit_placement(evidence, test_scores, share)
    threshold = float(np.median(thresholds)) if thresholds else model.first_below(placed)
    map_at_k = train_evidence_map(evidence, model, threshold, "optimal")
    return ValidationResult(threshold, map_at_k, thresholds, len(classes), model.contamination)


def conformal_threshold(evidence: TrainEvidence, max_false_flag: float) -> float:
    """The threshold that flags at most `max_false_flag` of known-class test items (split conformal).

    Assumes a known test item's score is exchangeable with the train leave-one-out scores; it sees
    one more image of its class than they do, so it scores as high or higher and the bound holds
    with room to spare. With m scores, the j-th lowest (j = ⌊α(m + 1)⌋) flags a known item with
    probability at most j / (m + 1) ≤ α; j = 0 flags nothing.
    """
    scores = np.sort(evidence.known_scores)
    rank = int(np.floor(max_false_flag * (len(scores) + 1)))
    return float(scores[rank - 1]) if rank >= 1 else -1.0  # no cosine similarity is below -1
