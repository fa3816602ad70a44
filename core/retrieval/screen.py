"""Exact top-k where bf16 products are fast: a bf16 screen in torch, exact fp32 re-ranking, and a certificate per query."""

from __future__ import annotations

import time
from functools import cache

import numpy as np

# The screen keeps each query's top `2·k + SCREEN_MARGIN` rows for the exact re-rank. Measured on
# CLIP-like vectors (100,000 test against 30,000 train): with k = 15 the certificate holds for 99.5% of
# queries, with k = 6 for 99.9%; the rest are searched again exactly.
SCREEN_MARGIN = 16
# Below this many query × row scores in one search a FAISS call is as quick as the screen's setup.
SCREEN_MIN_CELLS = 1 << 22
# The screen's cost per query grows with its candidates (selection and re-rank), FAISS's with the rows:
# measured side by side, the screen wins from about 400 rows per candidate (12,000 rows at k = 6).
SCREEN_ROWS_PER_CANDIDATE = 500
# Queries per screened block: at most 256, the fastest product rate measured here, and at most 16 MB
# of bf16 scores (a block of queries against 30,000 rows takes 15 MB; its candidates 12 MB in fp32).
SCREEN_QUERIES_PER_BLOCK = 256
SCREEN_CELLS_PER_BLOCK = 1 << 23
# The screen needs bf16 products this many times as fast as fp32 to pay for its selection and re-rank.
SCREEN_MIN_SPEEDUP = 2.0
_BF16_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest errs by at most 2⁻⁸ relative
_FP32_ROUNDOFF = 2.0**-24
_NORM_SLACK = 1 + 2.0**-10  # covers the fp32 rounding of a norm over up to thousands of dimensions


@cache
def bf16_speedup() -> float:
    """How many times faster torch multiplies bf16 than fp32 matrices here (0 without torch); timed once per process.

    bf16 is fast only on CPUs with AMX or AVX512-BF16; elsewhere it can be slower than fp32. A
    256 × 512 by 512 × 2048 product, best of three after a warm-up: a few ms each.
    """
    try:
        import torch
    except ImportError:
        return 0.0
    from core.embedding.clip import usable_cores

    torch.set_num_threads(usable_cores())
    generator = torch.Generator().manual_seed(0)
    queries, rows = torch.rand(256, 512, generator=generator), torch.rand(2048, 512, generator=generator)

    def best_of_three(left, right) -> float:
        torch.matmul(left, right.T)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            torch.matmul(left, right.T)
            times.append(time.perf_counter() - started)
        return min(times)

    return best_of_three(queries, rows) / best_of_three(queries.bfloat16(), rows.bfloat16())


def screen_pays(n_queries: int, n_rows: int, k: int) -> bool:
    """Whether screening `n_queries` against `n_rows` for the top k beats one exact FAISS search on this machine."""
    cells = n_queries * n_rows
    return (
        cells >= SCREEN_MIN_CELLS
        and candidates_for(k, n_rows) * SCREEN_ROWS_PER_CANDIDATE <= n_rows
        and bf16_speedup() >= SCREEN_MIN_SPEEDUP
    )


def candidates_for(k: int, n_rows: int) -> int:
    """Rows per query the screen hands to the exact re-rank."""
    return min(n_rows, 2 * k + SCREEN_MARGIN)


class Screen:
    """Exact top-k by inner product over fixed fp32 rows, screened in bf16.

    Results equal an exact fp32 scan (FAISS IndexFlatIP), ties ordered as FAISS orders them (later
    row first), for every query whose certificate holds; `search` names the others, for the caller
    to search exactly another way.
    """

    def __init__(self, vectors: np.ndarray):
        import torch

        self.vectors = vectors  # (n, d) float32, C-contiguous: the exact rows the re-rank reads
        self._bf16 = torch.from_numpy(vectors).bfloat16()
        rows, rounding = _norms_and_rounding(vectors, self._bf16)
        self._largest_row, self._largest_rounding = float(rows.max()), float(rounding.max())

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, indices, uncertain): the top-k rows of `allowed` (all if None) per query, and the queries whose top-k is not certain.

        Rows of `uncertain` queries in the first two arrays are the screen's best guess, not exact.
        """
        import torch

        rows = np.arange(len(self.vectors)) if allowed is None else np.flatnonzero(allowed)
        screened_rows = self._bf16 if allowed is None else self._bf16[torch.from_numpy(rows)]
        m = candidates_for(k, len(rows))
        similarities, indices = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
        uncertain = []
        block = max(1, min(SCREEN_QUERIES_PER_BLOCK, SCREEN_CELLS_PER_BLOCK // len(rows)))
        for start in range(0, len(queries), block):
            chunk = queries[start : start + block]
            # A copy: the queries may be read-only, which torch warns about (it is fast, unlike torch.tensor).
            chunk_bf16 = torch.from_numpy(chunk.copy()).bfloat16()
            screened = torch.topk(torch.matmul(chunk_bf16, screened_rows.T), m, dim=1)
            if m < len(rows):
                top = screened.values.float().numpy()
                certain = self._certain(chunk, chunk_bf16, top[:, k - 1], top[:, -1])
                uncertain.append(start + np.flatnonzero(~certain))
            candidates = rows[screened.indices.numpy()]
            # einsum's own loop: BLAS threads would spin on the cores torch's threads need next.
            exact = np.einsum("qcd,qd->qc", self.vectors[candidates], chunk)
            # Best first; equal similarities: later row first, as FAISS returns them.
            order = np.lexsort((-candidates, -exact), axis=1)[:, :k]
            similarities[start : start + len(chunk)] = np.take_along_axis(exact, order, 1)
            indices[start : start + len(chunk)] = np.take_along_axis(candidates, order, 1)
        return similarities, indices, np.concatenate(uncertain) if uncertain else np.zeros(0, np.int64)

    def _certain(self, queries: np.ndarray, queries_bf16, kth: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Per query: no row left out of its m screened candidates can beat its k-th best exactly.

        kth and last: each query's k-th and m-th best screened scores.

        The error of a screened score ŝ against the exact q·x, for fp32 rows q and x, their bf16
        roundings q̂ = q + Δq and x̂ = x + Δx, in d dimensions:
        1. Inputs: q̂·x̂ − q·x = Δq·x + q·Δx + Δq·Δx, so by Cauchy–Schwarz it is at most
           ‖Δq‖‖x‖ + ‖q‖‖Δx‖ + ‖Δq‖‖Δx‖. The residual norms are measured per row: they are near
           2⁻⁹·⁵ of the row's norm, where the per-value worst case (2⁻⁸ per value, Σ|qᵢxᵢ| ≤ 1 for unit
           rows) would allow 2·2⁻⁸.
        2. Accumulation: a product of two bf16 values (8-bit significands) is exact in fp32 (24 bits),
           and torch's CPU kernels (oneDNN) sum them in fp32, which errs by at most
           γ_d·Σ|q̂ᵢx̂ᵢ| ≤ γ_d‖q̂‖‖x̂‖, γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴).
        3. Output: torch returns a bf16 product for bf16 inputs on the CPU (a float32 `out_dtype` is
           CUDA-only), so the fp32 sum v is rounded once more. Rounding to nearest is monotonic and
           errs by at most 2⁻⁸|v|: a score screened at or below t was at most t + 2⁻⁸|t| before, one
           at or above t at least t − 2⁻⁸|t|. (Subnormal scores, below 2⁻¹²⁶, are far inside E.)
        4. The re-rank's own fp32 dot product errs from q·x by at most γ_d‖q‖‖x‖.
        With E = 1 + 2 + 4 (norms of x at their largest over the rows), a row left out of the top m
        (screened ≤ t_m) scores exactly at most t_m + 2⁻⁸|t_m| + E, and each of the top k (screened ≥
        t_k) at least t_k − 2⁻⁸|t_k| − E. So when t_k − t_m > 2⁻⁸(|t_k| + |t_m|) + 2E, k candidates beat
        every row left out, and the re-ranked top k is the exact one.
        """
        norms, rounding = _norms_and_rounding(queries, queries_bf16)
        row, row_rounding = self._largest_row, self._largest_rounding
        dims = queries.shape[1]
        gamma = dims * _FP32_ROUNDOFF / (1 - dims * _FP32_ROUNDOFF)
        inputs = rounding * row + norms * row_rounding + rounding * row_rounding
        summing = gamma * ((norms + rounding) * (row + row_rounding) + norms * row)
        return kth - last > _BF16_ROUNDOFF * (np.abs(kth) + np.abs(last)) + 2 * (inputs + summing)


def _norms_and_rounding(vectors: np.ndarray, rounded) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on each row's norm and on the norm of its bf16 rounding error (rounded: the rows as a bf16 tensor).

    A bf16 value is exact in fp32, and so is its difference from the fp32 value it rounds (the two
    are within a factor of 2); only the norms round, by far less than the slack added.
    """
    error = rounded.float().numpy() - vectors
    return _NORM_SLACK * np.linalg.norm(vectors, axis=1), _NORM_SLACK * np.linalg.norm(error, axis=1)
