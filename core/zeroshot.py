"""Text ↔ image scoring (seed 002): CLIP scores on 0–100, softmax over candidate texts, zero-shot labels, run stats."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

# CLIP's learned temperature (exp of its logit scale), the factor the released models apply to cosines.
LOGIT_SCALE = 100.0
RESULT_COLUMNS = ("image", "text", "clip_score", "probability", "zero_shot")


def _unit_rows(vectors: np.ndarray, name: str) -> np.ndarray:
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows × dimensions), got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(np.isfinite(rows)) or np.any(norms == 0):
        raise ValueError(f"{name} holds NaN, infinite or all-zero rows; every row must be a usable vector")
    return rows / norms


def cosine_matrix(image_vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    """(n_images, n_texts) cosine similarities; rows need not be normalised beforehand."""
    images, texts = _unit_rows(image_vectors, "image vectors"), _unit_rows(text_vectors, "text vectors")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image vectors have {images.shape[1]} dimensions but text vectors {texts.shape[1]}; "
            "embed both with the same CLIP model"
        )
    return images @ texts.T


def clip_scores(cosines: np.ndarray) -> np.ndarray:
    """Seed 002's score: 100 × cosine, clipped at 0, so 0 means unrelated and higher means closer."""
    return np.clip(100.0 * np.asarray(cosines, dtype=np.float64), 0.0, None)


def softmax_over_texts(cosines: np.ndarray, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """Per image (row), how the candidate texts share probability: softmax of logit_scale × cosine."""
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
    logits = logit_scale * np.asarray(cosines, dtype=np.float64)
    # Subtracting each row's maximum keeps exp from overflowing and leaves the softmax unchanged.
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ZeroShot:
    """Every image against every candidate text."""

    scores: np.ndarray  # (n_images, n_texts) CLIP scores, 0–100
    probabilities: np.ndarray  # (n_images, n_texts) softmax over texts; rows sum to 1
    best: np.ndarray  # (n_images,) index of each image's most probable text: its zero-shot label

    def table(self, image_names: Sequence[str], texts: Sequence[str]) -> pd.DataFrame:
        """One row per (image, text) pair, images in order, with whether the text is the zero-shot label."""
        n_images, n_texts = self.scores.shape
        if (len(image_names), len(texts)) != (n_images, n_texts):
            raise ValueError(
                f"{len(image_names)} image names and {len(texts)} texts for {n_images} × {n_texts} scores"
            )
        return pd.DataFrame(
            {
                "image": np.repeat(np.asarray(image_names, dtype=object), n_texts),
                "text": np.tile(np.asarray(texts, dtype=object), n_images),
                "clip_score": self.scores.ravel(),
                "probability": self.probabilities.ravel(),
                "zero_shot": (np.arange(n_texts)[None, :] == self.best[:, None]).ravel(),
            },
            columns=list(RESULT_COLUMNS),
        )


def zero_shot(image_vectors: np.ndarray, text_vectors: np.ndarray, logit_scale: float = LOGIT_SCALE) -> ZeroShot:
    """CLIP scores and softmax probabilities of every text for every image, and each image's best text."""
    cosines = cosine_matrix(image_vectors, text_vectors)
    probabilities = softmax_over_texts(cosines, logit_scale)
    return ZeroShot(clip_scores(cosines), probabilities, probabilities.argmax(axis=1))


@dataclass
class RunStats:
    """What a run cost: wall time, and the process's peak resident memory when it ended."""

    wall_seconds: float = 0.0
    peak_memory_mib: float = 0.0  # of the whole process so far (ru_maxrss), not of this run alone

    def log_text(self) -> str:
        """Seed 002's stats.log: one `name: value` line per figure."""
        return f"wall_time_s: {self.wall_seconds:.3f}\npeak_memory_mib: {self.peak_memory_mib:.1f}\n"


def peak_memory_mib() -> float:
    """The process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@contextmanager
def measured() -> Iterator[RunStats]:
    """Time the block (time.perf_counter) and read peak memory at its end; the stats fill in on exit."""
    stats = RunStats()
    started = time.perf_counter()
    try:
        yield stats
    finally:
        stats.wall_seconds = time.perf_counter() - started
        stats.peak_memory_mib = peak_memory_mib()
