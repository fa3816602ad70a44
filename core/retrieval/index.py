"""Nearest-neighbour search over normalised vectors with FAISS (inner product = cosine): exact, or approximate at scale."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import faiss
import numpy as np

INDEX_KINDS = ("auto", "exact", "hnsw", "ivf")
# "auto" searches exactly up to this many vectors: 13k queries against 100k take seconds and need no
# recall caveat. Above it the IVF index is ≥ 10× faster per query at recall@5 ≥ 0.95 (BENCHMARKS.md).
EXACT_UP_TO = 100_000
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


def _as_matrix(vectors: np.ndarray, name: str) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows × dimensions), got shape {matrix.shape}")
    return matrix


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
    similarities for the neighbours they find, but may miss some true neighbours.
    """

    def __init__(self, vectors: np.ndarray, kind: str = "auto"):
        matrix = _as_matrix(vectors, "indexed vectors")
        if matrix.shape[0] == 0:
            raise ValueError("cannot build an index over 0 vectors: the train split is empty")
        self.kind = resolve_kind(kind, matrix.shape[0])  # the kind in use: "exact", "hnsw" or "ivf"
        self.dim = matrix.shape[1]
        self._search_parameters = None
        if self.kind == "exact":
            self._index = faiss.IndexFlatIP(self.dim)
            self.settings = "exact inner product over every vector"
        elif self.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = HNSW_BUILD_CANDIDATES
            self._index.hnsw.efSearch = HNSW_SEARCH_CANDIDATES
            self.settings = f"HNSW graph, {HNSW_LINKS} links per vector, {HNSW_SEARCH_CANDIDATES} candidates per search"
        else:
            self._index, self._ivf_lists = _trained_ivf(matrix)
            probes = _probes(self._ivf_lists)
            self._search_parameters = _ivf_parameters(probes)
            self.settings = (
                f"IVF, {self._ivf_lists} lists of 8-bit codes, {probes} probed per query, "
                f"the best {IVF_RERANK_FACTOR}·k re-ranked with the full vectors"
            )
        self._index.add(matrix)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        """Top-k neighbours per query; k above the index size is clamped with a warning."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        matrix = _as_matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise ValueError(
                f"queries have {matrix.shape[1]} dimensions but the index has {self.dim}; "
                "embed queries and train with the same model"
            )
        if k > len(self):
            warnings.warn(f"k={k} is larger than the {len(self)} indexed vectors; using k={len(self)}")
            k = len(self)
        if matrix.shape[0] == 0:
            return Neighbours(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        similarities, indices = self._index.search(matrix, k, params=self._search_parameters)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:
            # The probed IVF lists held fewer than k vectors: probing every list finds them all.
            everything = _ivf_parameters(self._ivf_lists)
            similarities[short], indices[short] = self._index.search(matrix[short], k, params=everything)
        return Neighbours(similarities, indices.astype(np.int64))


def _trained_ivf(matrix: np.ndarray) -> tuple[faiss.IndexRefineFlat, int]:
    """A trained, still empty IVF index with 8-bit codes and exact re-ranking, and its number of lists."""
    n_rows, dim = matrix.shape
    n_lists = max(1, min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n_rows)), n_rows // IVF_TRAINING_ROWS_PER_LIST))
    lists = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, n_lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    lists.cp.niter = IVF_KMEANS_ROUNDS
    training_rows = min(n_rows, n_lists * IVF_TRAINING_ROWS_PER_LIST)
    sample = np.random.default_rng(_TRAINING_SEED).choice(n_rows, training_rows, replace=False)
    lists.train(matrix[np.sort(sample)])
    return faiss.IndexRefineFlat(lists), n_lists


def _ivf_parameters(probes: int) -> faiss.IndexRefineSearchParameters:
    return faiss.IndexRefineSearchParameters(
        k_factor=IVF_RERANK_FACTOR, base_index_params=faiss.SearchParametersIVF(nprobe=probes)
    )


def _probes(n_lists: int) -> int:
    return min(n_lists, max(IVF_MIN_PROBES, round(n_lists * IVF_PROBE_SHARE)))


def search(indexed: np.ndarray, queries: np.ndarray, k: int, kind: str = "auto") -> Neighbours:
    """One-shot cosine top-k of `queries` among `indexed`: exact unless the size or `kind` says otherwise."""
    return VectorIndex(indexed, kind).search(queries, k)
