"""Exact top-k where bf16 products are fast: a bf16 screen in torch, exact fp32 re-ranking, and a certificate per query."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache

import numpy as np

# The screen keeps each query's top `k + SCREEN_MARGIN` rows for the exact re-rank. Measured on CLIP-like
# vectors (4,096 test against 30,000 train): with k = 15 the certificate holds for 99.0% of queries at a
# margin of 16 and for all at 31; with k = 6 for all at 16. The rest are searched again exactly.
SCREEN_MARGIN = 20
# Queries not certified by their k + SCREEN_MARGIN candidates get a second look this many times as deep,
# from the same block's scores, before any is searched again with FAISS.
DEEPER = 4
# Below this many query × row scores in one search a FAISS call is as quick as the screen's setup.
SCREEN_MIN_CELLS = 1 << 22
# The screen's cost per query grows with its candidates (selection and re-rank), FAISS's with the rows and
# dimensions. Measured side by side at 512 dimensions (8,192 queries, 500 to 8,000 rows, k = 5 and 15, a
# loaded AMD EPYC), with up to FEW_CANDIDATES candidates the screen wins from about 60 rows per candidate
# with torch.topk and the numpy re-rank (1.0× at 40, 1.5× at 114), and from fewer than 15 with the
# compiled steps (1.4× at 14, 1.9× at 57). With more it slows fast (20,000 rows, compiled: 1.9× at 35
# candidates, 1.0× at 50, 0.5× at 120), so there it needs MANY_CANDIDATES_ROWS a candidate. Under
# SCREEN_MIN_DIMS dimensions FAISS's product is too cheap to beat (20,000 rows, 25 candidates: 0.86× at
# 64 dimensions, 1.4× at 128, 1.8× at 256).
SCREEN_ROWS_PER_CANDIDATE = 80
COMPILED_ROWS_PER_CANDIDATE = 15
FEW_CANDIDATES = 40
MANY_CANDIDATES_ROWS = 500
SCREEN_MIN_DIMS = 256
# Scores per screened block of queries: 64 MB of bf16. Blocks hold 256 to 2,048 queries (1,118 at 30k
# rows): each block makes two torch calls, and on a busy machine each call can wait for its thread
# pool to wake, so fewer, larger blocks pay. At 8,192 queries × 30k rows, k = 15, alternating, on a
# loaded AMD EPYC (load 5–8 on 2 cores), against 256-query blocks: 1.5× as fast with 512-query
# blocks, 1.6–2.0× with 1,024 and 1.8× with 2,048. Blocks of fewer than 256 queries run slower than
# FAISS (at 100,000 rows, 83-query blocks took 1.4× FAISS's time, 256-query blocks 0.67×), so the
# screen serves at most SCREEN_MAX_ROWS rows (128 MB of scores per block there). Splitting a block's
# rows into cache-sized parts, each with its own top-k merged at the end, took 3.2× as long on the
# same machine (medians of three): each part's calls wait for the pool too, and a 30k-row block's
# scores mostly stay in a 32 MB last-level cache anyway.
SCREEN_CELLS_PER_BLOCK = 1 << 25
SCREEN_QUERIES_PER_BLOCK = (256, 2048)
SCREEN_MAX_ROWS = 1 << 18
# From this many rows a screen loads the compiled steps (core.search.compiled) itself: at 30,000 rows
# their selection saves about 19 µs a query over torch.topk, at 3,000 about 4 µs, while loading them
# (numba's import and its disk cache) takes about 0.6 s of a core in each new process. A server,
# which searches again and again, loads them at its start (`load_compiled`).
COMPILED_MIN_ROWS = 10_000
# bf16 keeps 8 significant bits: rounding to nearest errs by at most 2⁻⁸ relative
_BF16_ROUNDOFF = 2.0**-8
_FP32_ROUNDOFF = 2.0**-24
_ROWS_PER_PART = 4096  # rows a screen converts at a time: 8 MB of fp32 at 512 dimensions
_NORM_SLACK = 1 + 2.0**-10  # covers the fp32 rounding of a norm over up to thousands of dimensions


@cache
def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): elsewhere torch emulates bf16, slower than fp32.

    With it torch multiplies bf16 2.5× (AVX512-BF16, an AMD EPYC) to 6× (AMX, an Intel Xeon) as fast
    as fp32 at the screen's shapes (BENCHMARKS.md, section 3). Read from the CPU's flags, not timed: a
    timing taken while another thread held the GIL (a model loading beside a dashboard's first
    analysis) measured bf16 barely faster than fp32 and kept the screen off for the whole process.
    """
    from core.embedding.clip import NATIVE_BF16_CPU_FLAGS, cpu_flags

    return bool(NATIVE_BF16_CPU_FLAGS & cpu_flags())


def screen_pays(n_queries: int, n_rows: int, k: int, dims: int) -> bool:
    """Whether screening `n_queries` against `n_rows` rows of `dims` dimensions for the top k beats one exact FAISS search here."""
    m = candidates_for(k, n_rows)
    if m > FEW_CANDIDATES:
        rows_per_candidate = MANY_CANDIDATES_ROWS
    elif _loaded(_compiled_loading) is None:
        rows_per_candidate = SCREEN_ROWS_PER_CANDIDATE
    else:
        rows_per_candidate = COMPILED_ROWS_PER_CANDIDATE
    return (
        n_queries * n_rows >= SCREEN_MIN_CELLS
        and dims >= SCREEN_MIN_DIMS
        and m * rows_per_candidate <= n_rows <= SCREEN_MAX_ROWS
        and bf16_native()
    )


def candidates_for(k: int, n_rows: int) -> int:
    """Rows per query the screen hands to the exact re-rank."""
    return min(n_rows, k + SCREEN_MARGIN)


class Screen:
    """Exact top-k by inner product over fixed fp32 rows, screened in bf16.

    Results equal an exact fp32 scan (FAISS IndexFlatIP), ties ordered as FAISS orders them (later
    row first), for every query whose certificate holds; `search` names the others, for the caller
    to search exactly another way.
    """

    def __init__(self, vectors: np.ndarray):
        import torch

        from core.embedding.clip import use_all_cores

        use_all_cores()
        self.vectors = vectors  # (n, d) float32, C-contiguous: the exact rows the re-rank reads
        # The screen multiplies the rows less their mean: a query's order is the same (q·mean is one
        # constant per query), while shorter rows and smaller scores halve the bf16 error bound.
        # Made once per screen in torch, whose conversions and norms use every core (the same rounding
        # as bf16_bits), in parts of rows that stay in cache: in numpy they took 1.5 s at 100,000 rows.
        exact = torch.from_numpy(vectors)
        mean = exact.mean(dim=0)
        # Dimensions × rows, contiguous: oneDNN multiplies it about twice as fast as a transposed view.
        self._columns = torch.empty((vectors.shape[1], len(vectors)), dtype=torch.bfloat16)
        largest = torch.zeros(3)
        for start in range(0, len(vectors), _ROWS_PER_PART):
            part = exact[start : start + _ROWS_PER_PART]
            centred = part - mean
            rounded = centred.bfloat16()
            self._columns[:, start : start + len(part)] = rounded.T
            for which, rows in enumerate((centred, rounded.float() - centred, part)):
                largest[which] = max(largest[which], torch.linalg.vector_norm(rows, dim=1).max())
        self._largest_row, self._largest_rounding, self._largest_exact_row = (
            _NORM_SLACK * float(value) for value in largest
        )
        self._scores = torch.empty(0, dtype=torch.bfloat16)  # see _scratch
        # the compiled steps, where they pay: see COMPILED_MIN_ROWS
        if len(vectors) >= COMPILED_MIN_ROWS:
            load_compiled()

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, indices, uncertain): the top-k rows of `allowed` (all if None) per query, and the queries whose top-k is not certain.

        Rows of `uncertain` queries in the first two arrays are the screen's best guess, not exact.

        Per block of queries, one bf16 product and one selection of each query's top k + margin
        screened scores, written into buffers made once per search; everything after the product
        (rounding the queries to bf16, widening the selected scores, the certificate and the fp32
        re-rank) runs in numpy or the compiled steps, as a torch call on a busy machine can wait
        milliseconds for its thread pool to wake (small bf16 conversions took a quarter of the
        search that way).
        """
        import torch

        from core.embedding.clip import usable_cores

        cores = usable_cores()
        rows = np.arange(len(self.vectors)) if allowed is None else np.flatnonzero(allowed)
        columns = self._columns if allowed is None else self._columns[:, torch.from_numpy(rows)]
        m = candidates_for(k, len(rows))
        similarities, indices = (
            np.empty((len(queries), k), np.float32),
            np.empty((len(queries), k), np.int64),
        )
        block = min(queries_per_block(len(rows)), len(queries))
        scores = self._scratch(block * len(rows)).view(block, len(rows))
        top = torch.empty((len(scores), m), dtype=torch.bfloat16)
        top_rows = torch.empty((len(scores), m), dtype=torch.int64)
        uncertain = []
        for start in range(0, len(queries), block):
            chunk = queries[start : start + block]
            n = len(chunk)
            chunk_bf16 = bf16_bits(chunk)
            torch.matmul(torch.from_numpy(chunk_bf16).view(torch.bfloat16), columns, out=scores[:n])
            compiled = _loaded(_compiled_loading)
            best = self._best(
                chunk, chunk_bf16, scores[:n], rows, m, k, (top[:n], top_rows[:n]), compiled, cores
            )
            similarities[start : start + n], indices[start : start + n], unsure = best
            deeper_m = min(len(rows), DEEPER * m)
            if unsure.size and deeper_m > m:
                # A second look, DEEPER times as deep, while the block's scores are still at hand:
                # most queries the first could not certify, this one does, without a search of their own.
                again = self._best(
                    chunk[unsure],
                    chunk_bf16[unsure],
                    scores[:n][torch.from_numpy(unsure)],
                    rows,
                    deeper_m,
                    k,
                    None,
                    compiled,
                    cores,
                )
                similarities[start + unsure], indices[start + unsure], still = again
                unsure = unsure[still]
            uncertain.append(start + unsure)
        return (
            similarities,
            indices,
            np.concatenate(uncertain) if uncertain else np.zeros(0, np.int64),
        )

    def _best(self, chunk, chunk_bf16, scores, rows, m, k, out, compiled, cores):
        """(similarities, rows, unsure) of each query's exact top k among its m best screened `scores`; unsure: the queries whose top k that cannot certify."""
        best_bits, best_rows = _top(scores, m, out, compiled, cores)
        screened = widened(best_bits)
        needed = self._needed(chunk, chunk_bf16, screened, k)
        candidates = rows[best_rows]
        widths = _prefix_widths(needed)
        exact = (
            self._reranked(chunk, candidates, widths)
            if compiled is None
            else compiled.exact_scores(self.vectors, chunk, candidates, widths, cores)
        )
        # Best first; equal similarities: later row first, as FAISS returns them.
        order = np.lexsort((-candidates, -exact), axis=1)[:, :k]
        # A row left out scored no more than the last candidate: if that one could still be among
        # the top k, so could they.
        unsure = np.flatnonzero(needed[:, -1]) if m < len(rows) else np.zeros(0, np.int64)
        return np.take_along_axis(exact, order, 1), np.take_along_axis(candidates, order, 1), unsure

    def _scratch(self, cells: int):
        """A bf16 buffer of at least `cells` scores, kept between searches.

        Callers search in parts (2,048 queries at a time for progress): a fresh 64 MB buffer per part
        costs a page fault per 4 KB on its first product, which took 1.4–1.5× as long into a fresh
        buffer as into a kept one (1,118 × 30k scores, medians of nine, on a loaded AMD EPYC).
        """
        if self._scores.numel() < cells:
            import torch

            self._scores = torch.empty(0, dtype=torch.bfloat16)  # let the old one go first
            self._scores = torch.empty(cells, dtype=torch.bfloat16)
        return self._scores[:cells]

    def _reranked(
        self, queries: np.ndarray, candidates: np.ndarray, widths: np.ndarray
    ) -> np.ndarray:
        """fp32 similarities of each query's first `widths` candidates (at least), -inf past them.

        The gather of the candidates' fp32 rows is most of the re-rank, and most queries need far
        fewer than all m (at 30k rows, 22 of 35 at k = 15 and 8 of 26 at k = 6, on CLIP-like vectors):
        all queries are re-ranked as deep as nine in ten of them need, the others further on their own.
        """
        exact = np.full(candidates.shape, -np.inf, np.float32)
        common = int(np.percentile(widths, 90, method="higher"))
        # einsum's own loop: BLAS threads would spin on the cores torch's threads need next.
        exact[:, :common] = np.einsum("qcd,qd->qc", self.vectors[candidates[:, :common]], queries)
        wide = np.flatnonzero(widths > common)
        if wide.size:
            deepest = int(widths[wide].max())
            exact[wide, common:deepest] = np.einsum(
                "qcd,qd->qc", self.vectors[candidates[wide, common:deepest]], queries[wide]
            )
        return exact

    def _needed(
        self, queries: np.ndarray, queries_bf16: np.ndarray, screened: np.ndarray, k: int
    ) -> np.ndarray:
        """Per query and candidate: whether the candidate can be among the query's top k exactly.

        queries_bf16: the queries' bf16 bit patterns, as multiplied; screened: each query's m best
        screened scores, best first. The first k are always needed; a candidate that is not needed
        scores exactly below all of them, and so does every row screened no higher.

        The error of a screened score ŝ against q·x − q·c (c: the rows' mean, the same for every row
        of a query, so it orders rows as q·x does), for fp32 rows q and x, y = fl(x − c), and the bf16
        roundings q̂ = q + Δq, ŷ = y + Δy, in d dimensions:
        1. Centring: fl(x − c) errs by at most 2⁻²⁴ per element relative, so |q·y − (q·x − q·c)| ≤
           2⁻²⁴‖q‖‖y‖.
        2. Inputs: q̂·ŷ − q·y = Δq·y + q·Δy + Δq·Δy, so by Cauchy–Schwarz it is at most
           ‖Δq‖‖y‖ + ‖q‖‖Δy‖ + ‖Δq‖‖Δy‖. The residual norms are measured per row: they are near
           2⁻⁹·⁵ of the row's norm, where the per-value worst case (2⁻⁸ per value, Σ|qᵢyᵢ| ≤ ‖q‖‖y‖)
           would allow 2·2⁻⁸.
        3. Accumulation: a product of two bf16 values (8-bit significands) is exact in fp32 (24 bits),
           and torch's CPU kernels (oneDNN) sum them in fp32, which errs by at most
           γ_d·Σ|q̂ᵢŷᵢ| ≤ γ_d‖q̂‖‖ŷ‖, γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴).
        4. Output: torch returns a bf16 product for bf16 inputs on the CPU (a float32 `out_dtype` is
           CUDA-only), so the fp32 sum v is rounded once more. Rounding to nearest is monotonic and
           errs by at most 2⁻⁸|v|: a score screened at or below t was at most t + 2⁻⁸|t| before, one
           at or above t at least t − 2⁻⁸|t|. (Subnormal scores, below 2⁻¹²⁶, are far inside E.)
        5. The re-rank's own fp32 dot product errs from q·x by at most γ_d‖q‖‖x‖.
        With E = 1 + 2 + 3 + 5 (row norms at their largest), a row screened at t scores exactly at most
        q·c + t + 2⁻⁸|t| + E, and each of the top k (screened ≥ t_k) at least q·c + t_k − 2⁻⁸|t_k| − E.
        So when t_k − t > 2⁻⁸(|t_k| + |t|) + 2E, k candidates beat that row, and every row screened
        lower (the left side grows faster than the right as t falls). When the m-th candidate is not
        needed, no row left out of the m is either, and the re-ranked top k is the exact one.
        """
        norms, rounding = _norms_and_rounding(queries, queries_bf16)
        row, row_rounding = self._largest_row, self._largest_rounding
        dims = queries.shape[1]
        gamma = dims * _FP32_ROUNDOFF / (1 - dims * _FP32_ROUNDOFF)
        centring = _FP32_ROUNDOFF * norms * row
        inputs = rounding * row + norms * row_rounding + rounding * row_rounding
        summing = gamma * (
            (norms + rounding) * (row + row_rounding) + norms * self._largest_exact_row
        )
        kth = screened[:, k - 1 : k]
        bound = 2 * (centring + inputs + summing)
        # written as "not separated" so that a NaN score counts as needed (and uncertain)
        return ~(
            kth - screened > _BF16_ROUNDOFF * (np.abs(kth) + np.abs(screened)) + bound[:, None]
        )


def _top(scores, m: int, out, compiled, cores: int) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 bits, columns) of each row's m best `scores`, best first: by the compiled selection when loaded, else by torch.topk (into `out` if given).

    Both keep the same scores; they may order equal ones otherwise, which the exact re-rank decides.
    """
    import torch

    if compiled is not None:
        bits = scores.view(torch.int16).numpy().view(np.uint16)
        return compiled.top_scores(bits, m, cores)
    values, columns = torch.topk(scores, m, dim=1, out=out)
    return values.view(torch.int16).numpy().view(np.uint16), columns.numpy()


# core.search.compiled, loading or loaded in this process (None: not asked for)
_compiled_loading: Future | None = None
_compiled_lock = threading.Lock()


def load_compiled() -> Future:
    """Load core.search.compiled in a thread of its own, once per process; screens use it from when it is ready (the Future's).

    Until then they run torch.topk and the numpy re-rank, whose torch products the loading overlaps
    (they run without the GIL). A load that fails leaves screens as they were.
    """
    global _compiled_loading
    with _compiled_lock:
        if _compiled_loading is None:
            loader = ThreadPoolExecutor(1, thread_name_prefix="compiled-loading")
            _compiled_loading = loader.submit(_load_compiled)
            loader.shutdown(wait=False)
        return _compiled_loading


def _load_compiled():
    from core.search import compiled

    # compiled, or loaded from numba's disk cache, for the argument types the screen passes
    compiled.top_scores(np.zeros((1, 1), np.uint16), 1, 1)
    one = np.zeros((1, 1), np.float32)
    compiled.exact_scores(one, one, np.zeros((1, 1), np.int64), np.ones(1, np.int64), 1)
    return compiled


def _loaded(loading: Future | None):
    """The compiled module once `loading` has finished well, else None."""
    if loading is None or not loading.done() or loading.exception() is not None:
        return None
    return loading.result()


def _prefix_widths(needed: np.ndarray) -> np.ndarray:
    """Per row, how many of its first columns hold every True of `needed` (its last True's position + 1)."""
    return needed.shape[1] - np.argmax(needed[:, ::-1], axis=1)


def queries_per_block(n_rows: int) -> int:
    """Queries screened per block against `n_rows` rows: SCREEN_CELLS_PER_BLOCK scores, within SCREEN_QUERIES_PER_BLOCK."""
    fewest, most = SCREEN_QUERIES_PER_BLOCK
    return min(most, max(fewest, SCREEN_CELLS_PER_BLOCK // max(n_rows, 1)))


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (to nearest, ties to even, as torch rounds), as their uint16 bit patterns.

    Finite values only: a NaN's payload could round into the infinity's pattern.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def widened(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns as the float32 values they stand for (exact: bf16 is float32's upper half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _norms_and_rounding(vectors: np.ndarray, rounded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on each row's norm and on the norm of its bf16 rounding error (rounded: the rows' bf16 bits).

    A bf16 value is exact in fp32, and so is its difference from the fp32 value it rounds (the two
    are within a factor of 2); only the norms round, by far less than the slack added.
    """
    error = widened(rounded) - vectors
    return _NORM_SLACK * np.linalg.norm(vectors, axis=1), _NORM_SLACK * np.linalg.norm(
        error, axis=1
    )
