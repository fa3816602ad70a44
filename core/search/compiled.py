"""The bf16 screen's two steps after its product, compiled: each query's best screened scores, and their exact fp32 re-rank.

They take the place of torch.topk and of numpy's gather of the candidates' rows, and run without
the GIL, one thread per core. Imported only where the screen runs: importing numba (it comes with
umap-learn) costs a fifth of a second, and the kernels compile once (about a second of one core),
then load from numba's disk cache in about a third of a second per process.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numba
import numpy as np

# Scores are read in groups of at most this many: each group's best comes from one vectorised pass,
# and only groups whose best reaches the m-th best group's are read again. At 30,000 rows and 35
# candidates, 128 beat 32, 64 and 256 (1,120 queries, both cores).
LARGEST_GROUP = 128
# Groups per candidate at least: with fewer, most groups reach the threshold and are read twice.
GROUPS_PER_CANDIDATE = 4


def _jit(**options):
    """numba-compiled without the GIL, kept in numba's disk cache where one can be written."""

    def compiled(function):
        settings = {"nogil": True, "boundscheck": False, **options}
        try:
            return numba.njit(cache=True, **settings)(function)
        except RuntimeError:  # numba: "no locator available": nowhere to keep it
            return numba.njit(**settings)(function)  # so compiled in each process

    return compiled


def top_scores(bits: np.ndarray, m: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(best bf16 bit patterns, their columns): each row's m best scores, best first.

    bits: (queries, rows) bf16 scores as uint16 bit patterns; 1 ≤ m ≤ rows. Equal scores keep the
    earlier column first. The same scores as ``torch.topk`` (which may order ties otherwise) in a
    half to a third of its time on a 30k-row block: most scores are only compared with their
    group's best, and nothing is sorted but the m kept.
    """
    n, n_rows = bits.shape
    if not 1 <= m <= n_rows:
        raise ValueError(f"m must be between 1 and the {n_rows} rows, got {m}")
    best = np.empty((n, m), np.uint16)
    columns = np.empty((n, m), np.int64)
    group = max(1, min(LARGEST_GROUP, n_rows // (GROUPS_PER_CANDIDATE * m)))
    _in_threads(_select, n, threads, bits, m, group, best, columns)
    return best, columns


def exact_scores(
    vectors: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    widths: np.ndarray,
    threads: int,
) -> np.ndarray:
    """fp32 inner products of each query with its first `widths` candidates' rows, -inf past them.

    vectors: the rows, float32, C-contiguous and writable (as the flat index's own are).

    Summed in whatever order vectorises best: every order errs by at most γ_d‖q‖‖x‖, the bound the
    screen's certificate allows for its re-rank. Rows are read where they lie, not gathered first.
    """
    # one compiled form: read-only or strided arguments would each compile another
    queries, candidates, widths = (
        np.require(array, dtype, ["C", "W"])
        for array, dtype in ((queries, np.float32), (candidates, np.int64), (widths, np.int64))
    )
    exact = np.full(candidates.shape, -np.inf, np.float32)
    _in_threads(_dots, len(queries), threads, vectors, queries, candidates, widths, exact)
    return exact


def _in_threads(kernel, n: int, threads: int, *arguments) -> None:
    """kernel(start, stop, *arguments) over n items in consecutive spans, one thread per span (it runs without the GIL)."""
    spans = list(pairwise(np.linspace(0, n, max(1, min(threads, n)) + 1).astype(np.int64).tolist()))
    if len(spans) == 1:
        kernel(0, n, *arguments)
        return
    list(_pool(len(spans), os.getpid()).map(lambda span: kernel(*span, *arguments), spans))


@cache
def _pool(threads: int, process: int) -> ThreadPoolExecutor:
    """Threads kept for the process (a forked child gets its own): starting them per block cost a few milliseconds each on a busy machine."""
    return ThreadPoolExecutor(threads, thread_name_prefix="compiled")


@_jit()
def _key(bits):
    """bf16 bits as an integer that orders as the values do: a positive value's sign bit set, a negative
    value's bits flipped and one added, so that -0 and +0 are equal."""
    value = np.int32(bits)
    negative = value >> 15
    return (value ^ (0x8000 | (0x7FFF * negative))) + negative


@_jit()
def _keep(keys, columns, filled, key, column):
    """Insert (key, column) into the best-first arrays holding `filled` entries, dropping the last when full; the new count."""
    m = len(keys)
    j = filled if filled < m else m - 1
    while j > 0 and keys[j - 1] < key:
        keys[j] = keys[j - 1]
        columns[j] = columns[j - 1]
        j -= 1
    keys[j] = key
    columns[j] = column
    return min(filled + 1, m)


@_jit()
def _select(start, stop, bits, m, group, best_out, columns_out):
    n_rows = bits.shape[1]
    n_groups = (n_rows + group - 1) // group
    group_best = np.empty(n_groups, np.int32)
    threshold_keys, threshold_groups = np.empty(m, np.int32), np.empty(m, np.int64)
    keys, columns = np.empty(m, np.int32), np.empty(m, np.int64)
    for i in range(start, stop):
        row = bits[i]
        for g in range(n_groups):
            top = np.int32(0)
            for column in range(g * group, min(g * group + group, n_rows)):
                key = _key(row[column])
                top = key if key > top else top
            group_best[g] = top
        # The m-th best of the groups' bests: at least m scores reach it, so none below it is needed.
        filled = 0
        for g in range(n_groups):
            if filled < m or group_best[g] > threshold_keys[m - 1]:
                filled = _keep(threshold_keys, threshold_groups, filled, group_best[g], g)
        threshold = threshold_keys[m - 1] if filled == m else np.int32(0)
        filled = 0
        for g in range(n_groups):
            if group_best[g] < threshold:
                continue
            for column in range(g * group, min(g * group + group, n_rows)):
                key = _key(row[column])
                if key >= threshold and (filled < m or key > keys[m - 1]):
                    filled = _keep(keys, columns, filled, key, column)
        for j in range(m):
            best_out[i, j] = row[columns[j]]
            columns_out[i, j] = columns[j]


# fastmath lets the sum vectorise (reassociation) and fuse multiply-adds; the inputs are finite.
@_jit(fastmath=True)
def _dots(start, stop, vectors, queries, candidates, widths, out):
    dims = vectors.shape[1]
    for i in range(start, stop):
        for j in range(widths[i]):
            row = candidates[i, j]
            total = np.float32(0)
            for t in range(dims):
                total += vectors[row, t] * queries[i, t]
            out[i, j] = total
