"""Nearest-neighbour search over normalised vectors with FAISS (exact inner product = cosine)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import faiss
import numpy as np


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


class VectorIndex:
    """An exact cosine index over L2-normalised rows (FAISS IndexFlatIP)."""

    def __init__(self, vectors: np.ndarray):
        matrix = _as_matrix(vectors, "indexed vectors")
        if matrix.shape[0] == 0:
            raise ValueError("cannot build an index over 0 vectors: the train split is empty")
        self.dim = matrix.shape[1]
        self._index = faiss.IndexFlatIP(self.dim)
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
        similarities, indices = self._index.search(matrix, k)
        return Neighbours(similarities, indices.astype(np.int64))


def search(indexed: np.ndarray, queries: np.ndarray, k: int) -> Neighbours:
    """One-shot exact cosine top-k of `queries` among `indexed`."""
    return VectorIndex(indexed).search(queries, k)
