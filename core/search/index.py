"""Nearest-neighbour search over normalised vectors with FAISS (inner product = cosine): exact, or approximate at scale."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import faiss
import numpy as np

from core.search.screen import Screen, screen_pays

INDEX_KINDS = ("auto", "exact", "hnsw", "ivf")
# "auto" searches exactly up to this many vectors: 13k queries against 100k take seconds and need no
# recall caveat. Above it the IVF index is ≥ 10× faster per query at recall@5 ≥ 0.95 (BENCHMARKS.md).
EXACT_UP_TO = 100_000
# A row whose length is this close to 1 is taken as unit length and left as it is: float32 rows normalised
# once (as vectors are at ingest) are within 5e-7 of it up to 4096 dimensions.
UNIT_TOLERANCE = 1e-6
# IVF: about 2·√n lists; k-means trains on 40 rows per list (FAISS warns below 39) for 10 rounds.
# Lists store 8-bit codes, a quarter of the bytes a scan must read, and the best 2·k candidates
# are re-ranked with the full vectors, so the similarities returned are exact.
IVF_LISTS_PER_SQRT_N = 2
IVF_TRAINING_ROWS_PER_LIST = 40
IVF_KMEANS_ROUNDS = 10
IVF_RERANK_FACTOR = 2
# Lists probed per query: a 64th of them, at least 8. Queries far from every train item (distractors)
# have near-ties among their top-5 and are the ones that need the wide probe.
IVF_PROBE_SHARE = 1 / 64
IVF_MIN_PROBES = 8
# HNSW: 32 links per node; candidate lists of 48 while building and 128 while searching.
HNSW_LINKS = 32
HNSW_BUILD_CANDIDATES = 48
HNSW_SEARCH_CANDIDATES = 128
# Seeds the IVF training sample, so the same vectors always build the same index.
_TRAINING_SEED = 0


@dataclass(frozen=True)
class Neighbours:
    """Top-k train neighbours of each query, best first."""

    similarities: np.ndarray  # (n_queries, k) float32 cosine similarities, descending
    indices: np.ndarray  # (n_queries, k) int64 row numbers into the indexed vectors

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def checked_vectors(
    vectors: np.ndarray,
    name: str,
    *,
    min_rows: int = 0,
    min_dims: int = 1,
    finite: bool = True,
    dtype=np.float32,
) -> np.ndarray:
    """`vectors` as a C-contiguous 2-D `dtype` array, refused by `name` when its shape or (if `finite`) values are bad.

    Every stage that takes vectors from a caller checks them here. The index itself passes
    finite=False: its vectors were checked at ingest, and a scan of a million rows is not free.
    """
    matrix = np.ascontiguousarray(vectors, dtype=dtype)
    if matrix.ndim != 2 or matrix.shape[0] < min_rows or matrix.shape[1] < min_dims:
        raise ValueError(
            f"{name} must be a 2-D array of shape (rows ≥ {min_rows}, dimensions ≥ {min_dims}); got shape {matrix.shape}"
        )
    if finite:
        bad = ~np.isfinite(matrix).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{name} have NaN or infinite values in {int(bad.sum())} of {len(matrix)} rows "
                f"(first at row {int(np.argmax(bad))}); only finite vectors can be used"
            )
    return matrix


def unit_rows(vectors: np.ndarray, name: str, keep_zero_rows: bool = False) -> np.ndarray:
    """Checked rows scaled to unit length, float32; an all-zero row is refused by name, or kept at zero if asked."""
    matrix = checked_vectors(vectors, name)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    zero = norms == 0
    if zero.any() and not keep_zero_rows:
        raise ValueError(
            f"{name} row {int(np.flatnonzero(zero)[0])} is all zeros: it has no direction"
        )
    # Vectors are normalised at ingest: rows already of unit length (or kept zero) are not copied again.
    if np.all(zero | (np.abs(norms - 1) <= UNIT_TOLERANCE)):
        return matrix
    return matrix / np.where(zero, 1, norms)[:, None]


def resolve_kind(kind: str, n_vectors: int) -> str:
    """The index kind used for `n_vectors`: "auto" is "exact" up to EXACT_UP_TO vectors and "ivf" above."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "exact" if n_vectors <= EXACT_UP_TO else "ivf"
    return kind


class VectorIndex:
    """A cosine index over L2-normalised rows: exact (IndexFlatIP), or HNSW / IVF for large sets.

    kind="auto" is exact up to EXACT_UP_TO vectors and IVF above. Approximate kinds return exact
    similarities for the neighbours they find, but may miss some true neighbours. The exact kind
    screens large searches in bf16 where that is fast (core.search.screen) and returns what
    IndexFlatIP returns.
    """

    def __init__(self, vectors: np.ndarray, kind: str = "auto"):
        matrix = checked_vectors(vectors, "indexed vectors", finite=False)
        if matrix.shape[0] == 0:
            raise ValueError("cannot build an index over 0 vectors: the train split is empty")
        self.kind = resolve_kind(kind, matrix.shape[0])  # the kind in use: "exact", "hnsw" or "ivf"
        self.dim = matrix.shape[1]
        self._probes = self._ivf_lists = None  # IVF only: lists probed per query, and lists in all
        # exact only: made at the first search the screen pays for
        self._screen: Screen | None = None
        self.screened_queries = 0  # queries the bf16 screen answered or passed on (exact only)
        # … of which the screen could not certify, searched again with FAISS
        self.rechecked_queries = 0
        if self.kind == "exact":
            self._index = faiss.IndexFlatIP(self.dim)
            self._settings = "exact inner product over every vector"
        elif self.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = HNSW_BUILD_CANDIDATES
            self._index.hnsw.efSearch = HNSW_SEARCH_CANDIDATES
            self._settings = f"HNSW graph, {HNSW_LINKS} links per vector, {HNSW_SEARCH_CANDIDATES} candidates per search"
        else:
            self._index, self._ivf_lists = _trained_ivf(matrix)
            self._probes = _probes(self._ivf_lists)
            self._settings = (
                f"IVF, {self._ivf_lists} lists of 8-bit codes, {self._probes} probed per query, "
                f"the best {IVF_RERANK_FACTOR}·k re-ranked with the full vectors"
            )
        self._index.add(matrix)

    @property
    def settings(self) -> str:
        """The index in words; for the exact kind, how its searches so far ran."""
        if not self.screened_queries:
            return self._settings
        return (
            f"{self._settings} (bf16 screen, fp32 re-rank; {self.rechecked_queries:,} of "
            f"{self.screened_queries:,} queries searched again with FAISS)"
        )

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        """Top-k neighbours per query, only among the rows `allowed` marks True when it is given.

        k above the number of candidate rows is clamped with a warning.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        matrix = checked_vectors(queries, "queries", finite=False)
        if matrix.shape[1] != self.dim:
            raise ValueError(
                f"queries have {matrix.shape[1]} dimensions but the index has {self.dim}; "
                "embed queries and train with the same model"
            )
        selector, candidates = None, len(self)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (len(self),):
                raise ValueError(
                    f"allowed must mark each of the {len(self)} indexed rows, got shape {allowed.shape}"
                )
            candidates = int(allowed.sum())
            if candidates == 0:
                raise ValueError("allowed marks no indexed row: there is nothing to search")
            # FAISS reads the bitmap while searching: `bits` must outlive the search calls below.
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits))
        if k > candidates:
            warnings.warn(
                f"k={k} is larger than the {candidates} indexed vectors searched; using k={candidates}",
                stacklevel=2,
            )
            k = candidates
        if matrix.shape[0] == 0:
            return Neighbours(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        if self.kind == "exact" and screen_pays(matrix.shape[0], candidates, k, self.dim):
            similarities, indices, uncertain = self._screened().search(matrix, k, allowed)
            self.screened_queries += matrix.shape[0]
            self.rechecked_queries += uncertain.size
            if uncertain.size:
                similarities[uncertain], indices[uncertain] = self._faiss_search(
                    matrix[uncertain], k, selector
                )
        else:
            similarities, indices = self._faiss_search(matrix, k, selector)
        return Neighbours(similarities, indices)

    def _faiss_search(self, matrix: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and int64 row numbers of the top k, searched by the FAISS index itself."""
        similarities, indices = self._index.search(
            matrix, k, params=self._parameters(selector, self._probes)
        )
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:
            # The probed IVF lists held fewer than k vectors: probing every list finds them all.
            everything = self._parameters(selector, self._ivf_lists)
            similarities[short], indices[short] = self._index.search(
                matrix[short], k, params=everything
            )
        return similarities, indices.astype(np.int64)

    def _screened(self) -> Screen:
        """The bf16 screen over the indexed vectors, which it reads in place from the flat index."""
        if self._screen is None:
            stored = faiss.rev_swig_ptr(self._index.get_xb(), len(self) * self.dim)
            self._screen = Screen(stored.reshape(len(self), self.dim))
        return self._screen

    def _parameters(self, selector, probes: int | None):
        """FAISS search parameters for this kind: the IVF lists probed, and the rows allowed (None: all)."""
        if self.kind == "ivf":
            return faiss.IndexRefineSearchParameters(
                k_factor=IVF_RERANK_FACTOR,
                base_index_params=faiss.SearchParametersIVF(nprobe=probes, sel=selector),
            )
        if selector is None:
            return None
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=HNSW_SEARCH_CANDIDATES, sel=selector)
        return faiss.SearchParameters(sel=selector)


def _trained_ivf(matrix: np.ndarray) -> tuple[faiss.IndexRefineFlat, int]:
    """A trained, still empty IVF index with 8-bit codes and exact re-ranking, and its number of lists."""
    n_rows, dim = matrix.shape
    n_lists = max(
        1,
        min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n_rows)), n_rows // IVF_TRAINING_ROWS_PER_LIST),
    )
    lists = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        n_lists,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    lists.cp.niter = IVF_KMEANS_ROUNDS
    training_rows = min(n_rows, n_lists * IVF_TRAINING_ROWS_PER_LIST)
    sample = np.random.default_rng(_TRAINING_SEED).choice(n_rows, training_rows, replace=False)
    lists.train(matrix[np.sort(sample)])
    return faiss.IndexRefineFlat(lists), n_lists


def _probes(n_lists: int) -> int:
    return min(n_lists, max(IVF_MIN_PROBES, round(n_lists * IVF_PROBE_SHARE)))


def nearest_others(vectors: np.ndarray, depth: int, rows: np.ndarray | None = None) -> Neighbours:
    """Each of `rows`' (every row's by default) top `depth` neighbours among the other rows of `vectors`.

    Fewer than `depth` when there are fewer other rows. A row is searched among all, itself
    dropped: where duplicates tie with it and push it out of the result, its last neighbour goes."""
    n = vectors.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    depth = min(depth, n - 1)
    if depth < 1:
        return Neighbours(np.zeros((len(rows), 0), np.float32), np.zeros((len(rows), 0), np.int64))
    found = VectorIndex(vectors).search(vectors[rows], depth + 1)
    own = found.indices == rows[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    return Neighbours(
        found.similarities[keep].reshape(len(rows), depth),
        found.indices[keep].reshape(len(rows), depth),
    )


def search(indexed: np.ndarray, queries: np.ndarray, k: int, kind: str = "auto") -> Neighbours:
    """One-shot cosine top-k of `queries` among `indexed`: exact unless the size or `kind` says otherwise."""
    return VectorIndex(indexed, kind).search(queries, k)
