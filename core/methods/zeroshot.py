"""Text ↔ image runs: every candidate text ranked per image as one table, and the run's time and memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.methods.regression import PromptRanking

RESULT_COLUMNS = ("image", "rank", "text", "clip_score", "probability")


def results_table(image_names: Sequence[str], ranking: PromptRanking) -> pd.DataFrame:
    """One row per (image, ranked text), each image's texts best first; rank 1 is its zero-shot label.

    ``ranking`` comes from core.methods.regression.rank_prompts; rank it with k = the number of candidate
    texts for every pair, or a smaller k for each image's best texts only.
    """
    n_images, k = ranking.indices.shape
    if len(image_names) != n_images:
        raise ValueError(
            f"{len(image_names)} image names for a ranking of {n_images} images; give one name per image"
        )
    return pd.DataFrame(
        {
            "image": np.repeat(np.asarray(image_names, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1), n_images),
            "text": [text for row in ranking.texts for text in row],
            "clip_score": ranking.scores.ravel(),
            "probability": ranking.probabilities.ravel(),
        },
        columns=list(RESULT_COLUMNS),
    )


@dataclass
class RunStats:
    """What a run cost: wall time, and the process's peak resident memory when it ended."""

    wall_seconds: float = 0.0
    peak_memory_mib: float = 0.0  # of the whole process so far (ru_maxrss), not of this run alone

    def log_text(self) -> str:
        """A stats.log: one `name: value` line per figure."""
        return (
            f"wall_time_s: {self.wall_seconds:.3f}\npeak_memory_mib: {self.peak_memory_mib:.1f}\n"
        )


def peak_memory_mib() -> float:
    """The process's peak resident set size in MiB (ru_maxrss counts KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@contextmanager
def measured() -> Iterator[RunStats]:
    """Time the block with time.perf_counter and read peak memory at its end; the stats fill in on exit."""
    stats = RunStats()
    started = time.perf_counter()
    try:
        yield stats
    finally:
        stats.wall_seconds = time.perf_counter() - started
        stats.peak_memory_mib = peak_memory_mib()
