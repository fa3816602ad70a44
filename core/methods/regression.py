"""kNN regression in embedding space and image → prompt retrieval by CLIP score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.search.index import checked_vectors, search, unit_rows

# Training prompts closer than this cosine to one already kept are dropped, against overfitting.
DEFAULT_DEDUPE_THRESHOLD = 0.95
# CLIP's learned logit scale: its softmax over candidates uses 100 × cosine.
CLIP_LOGIT_SCALE = 100.0
# Similarity-matrix cells computed at once (float32: 4 bytes each), to bound memory on big inputs.
_BLOCK_CELLS = 1 << 22


def cosine_scores(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Row-by-row cosine similarity of predictions and their targets."""
    predicted, targets = unit_rows(predicted, "predictions"), unit_rows(targets, "targets")
    if predicted.shape != targets.shape:
        raise ValueError(
            f"predictions have shape {predicted.shape} but targets {targets.shape}; they must match"
        )
    return np.sum(predicted * targets, axis=1, dtype=np.float64)


def mean_cosine(predicted: np.ndarray, targets: np.ndarray) -> float:
    """The image-to-prompt score: the mean cosine similarity between predicted and true target vectors."""
    scores = cosine_scores(predicted, targets)
    if scores.size == 0:
        raise ValueError("nothing to score: 0 rows")
    return float(scores.mean())


def dedupe_pairs(targets: np.ndarray, threshold: float = DEFAULT_DEDUPE_THRESHOLD) -> np.ndarray:
    """Rows to keep, in order: a row is dropped when its target is above `threshold` cosine to a kept earlier row."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"dedupe threshold is a cosine similarity in [-1, 1], got {threshold}")
    unit = unit_rows(targets, "targets")
    n = len(unit)
    kept = np.ones(n, dtype=bool)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        close = unit[start:stop] @ unit[:stop].T > threshold
        # Only earlier rows can make a row a duplicate.
        close &= np.arange(stop)[None, :] < np.arange(start, stop)[:, None]
        for offset in np.flatnonzero(close.any(axis=1)):
            row = start + offset
            kept[row] = not np.any(close[offset, :row] & kept[:row])
    return np.flatnonzero(kept)


@dataclass(frozen=True)
class KnnRegression:
    """Predicted target vectors for queries, from their nearest training inputs."""

    # (n_queries, target_dim) float32 similarity-weighted mean of neighbours' targets
    predictions: np.ndarray
    kept_rows: np.ndarray  # training rows used after deduplication
    k: int  # neighbours averaged per query (after clamping to the training size)
    notes: list[str]  # deduplication and clamping, for people


def knn_regress(
    train_inputs: np.ndarray,
    train_targets: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    dedupe_threshold: float | None = DEFAULT_DEDUPE_THRESHOLD,
) -> KnnRegression:
    """Each query's target as the similarity-weighted mean of its k nearest training inputs' targets.

    Inputs and queries are compared by cosine; neighbours with negative similarity get no weight.
    Training pairs whose targets nearly repeat a kept one are dropped first (None: keep all).
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    inputs = unit_rows(train_inputs, "training inputs")
    targets = checked_vectors(train_targets, "training targets")
    if len(targets) != len(inputs):
        raise ValueError(
            f"training targets must be one row per training input ({len(inputs)}), got {len(targets)} rows"
        )
    query_rows = unit_rows(queries, "queries")
    if query_rows.shape[1] != inputs.shape[1]:
        raise ValueError(
            f"queries have {query_rows.shape[1]} dimensions but training inputs {inputs.shape[1]}"
        )
    if len(inputs) == 0:
        raise ValueError("kNN regression needs at least one training pair")
    notes = []
    kept = np.arange(len(inputs))
    if dedupe_threshold is not None:
        kept = dedupe_pairs(targets, dedupe_threshold)
        if len(kept) < len(inputs):
            notes.append(
                f"dropped {len(inputs) - len(kept)} of {len(inputs)} training pairs whose targets are above "
                f"cosine {dedupe_threshold} to one kept"
            )
    if k > len(kept):
        notes.append(f"k lowered from {k} to {len(kept)}, the number of training pairs")
        k = len(kept)
    neighbours = search(inputs[kept], query_rows, k)
    weights = np.clip(neighbours.similarities, 0.0, None)
    # A query unlike every neighbour still gets an answer: their plain mean.
    weights[weights.sum(axis=1) == 0] = 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    predictions = np.einsum("qk,qkt->qt", weights, targets[kept][neighbours.indices]).astype(
        np.float32
    )
    return KnnRegression(predictions, kept, int(k), notes)


def clip_scores(cosines: np.ndarray) -> np.ndarray:
    """CLIP score: 100 × cosine, clipped at 0."""
    return np.maximum(CLIP_LOGIT_SCALE * np.asarray(cosines, dtype=np.float64), 0.0)


@dataclass(frozen=True)
class PromptRanking:
    """The best texts for each image, by CLIP score."""

    texts: list[list[str]]  # top-k texts per image, best first
    indices: np.ndarray  # (n_images, k) rows into the candidate texts
    scores: np.ndarray  # (n_images, k) CLIP score, 0–100
    probabilities: np.ndarray  # (n_images, k) softmax over all candidates at CLIP's logit scale


def rank_prompts(
    image_vectors: np.ndarray, text_vectors: np.ndarray, texts: Sequence[str], k: int = 5
) -> PromptRanking:
    """Rank candidate texts for each image by CLIP score, the idea behind CLIP Interrogator.

    Image and text vectors must come from the same CLIP model. k above the number of texts is clamped.
    """
    images = unit_rows(image_vectors, "image vectors")
    candidates = unit_rows(text_vectors, "text vectors")
    if len(texts) != len(candidates):
        raise ValueError(
            f"{len(candidates)} text vectors but {len(texts)} texts; give one text per vector"
        )
    if len(candidates) == 0:
        raise ValueError("no candidate texts to rank")
    if images.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"image vectors have {images.shape[1]} dimensions but text vectors {candidates.shape[1]}: "
            "embed both with the same CLIP model"
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    neighbours = search(candidates, images, min(k, len(candidates)))
    # Softmax in float64 from one matrix product: at scale 100, float32 rounding shows.
    probabilities = np.empty(neighbours.indices.shape)
    block = max(1, _BLOCK_CELLS // len(candidates))
    for start in range(0, len(images), block):
        rows = slice(start, start + block)
        logits = CLIP_LOGIT_SCALE * (
            images[rows].astype(np.float64) @ candidates.T.astype(np.float64)
        )
        logits -= logits.max(axis=1, keepdims=True)
        log_normaliser = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        probabilities[rows] = np.exp(
            np.take_along_axis(logits, neighbours.indices[rows], axis=1) - log_normaliser
        )
    return PromptRanking(
        texts=[[texts[i] for i in row] for row in neighbours.indices],
        indices=neighbours.indices,
        scores=clip_scores(neighbours.similarities),
        probabilities=probabilities,
    )
