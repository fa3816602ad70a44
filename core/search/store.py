"""The searches an analysis needs, kept on disk per vectors and settings, so a revisit or a restart reads them instead of searching."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io.array_store import ArrayStore, arrays_digest
from core.search.index import Neighbours

# Part of every key: bump when what is stored, or how it is searched, changes.
SEARCH_FORMAT = "search-v2"


# eq=False: fields are arrays, whose == is element-wise rather than a truth value.
@dataclass(frozen=True, eq=False)
class SearchResults:
    """Test searched against train, and train against itself: everything an analysis searches for."""

    neighbours: Neighbours  # each test item's top max(k, score_k) train neighbours
    labels: list[list[str]]  # each test item's k distinct train labels, best first, no "-1"
    scores: np.ndarray  # distractor score per test item
    train_loo_scores: np.ndarray  # each train item's score against the rest of train
    train_neighbours: Neighbours  # each train item's top neighbours among the rest of train


def search_key(
    train_vectors: np.ndarray, train_labels: np.ndarray, test_vectors: np.ndarray, settings: str
) -> str:
    """Content address of the searches: both sets of vectors, the train labels (they rank the labels) and the settings."""
    labels = np.asarray([str(label) for label in train_labels], dtype=str)
    return arrays_digest(SEARCH_FORMAT, (train_vectors, labels, test_vectors), settings)


class SearchStore:
    """Search results as one `<key>.npz` each (beside the projections), written whole or not at all, checked on read."""

    def __init__(self, directory: Path) -> None:
        self.files = ArrayStore(directory, "search results")

    def path(self, key: str) -> Path:
        return self.files.path(key)

    def get(self, key: str, n_train: int, n_test: int) -> SearchResults | None:
        """The results stored for `n_train` train and `n_test` test items, or None when absent or unusable (they are then searched again)."""
        shapes = {
            "similarities": (n_test, None),
            "indices": (n_test, None),
            "classes": (None,),
            "label_codes": (n_test, None),
            "scores": (n_test,),
            "train_loo_scores": (n_train,),
            "train_similarities": (n_train, None),
            "train_indices": (n_train, None),
        }
        return self.files.get(key, _decoded, shapes)

    def put(self, key: str, results: SearchResults) -> None:
        """Store the results; a store that cannot be written only warns (the caller keeps the results)."""
        classes, codes = _label_codes(results.labels, results.neighbours.indices.shape[0])
        self.files.put(
            key,
            {
                "similarities": results.neighbours.similarities,
                "indices": results.neighbours.indices,
                "classes": classes,
                "label_codes": codes,
                "scores": results.scores,
                "train_loo_scores": results.train_loo_scores,
                "train_similarities": results.train_neighbours.similarities,
                "train_indices": results.train_neighbours.indices,
            },
        )


def _label_codes(rows: list[list[str]], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranked labels as the distinct classes and a (rows, longest row) table of their positions, -1 past a row's end."""
    classes = np.array(sorted({label for row in rows for label in row}), dtype=str)
    position = {label: code for code, label in enumerate(classes.tolist())}
    codes = np.full((n_rows, max((len(row) for row in rows), default=0)), -1, np.int32)
    for row_number, row in enumerate(rows):
        codes[row_number, : len(row)] = [position[label] for label in row]
    return classes, codes


def _decoded(stored: Mapping[str, np.ndarray]) -> SearchResults:
    classes, codes = stored["classes"], stored["label_codes"]
    return SearchResults(
        Neighbours(stored["similarities"], stored["indices"]),
        [classes[row[row >= 0]].tolist() for row in codes],
        stored["scores"],
        stored["train_loo_scores"],
        Neighbours(stored["train_similarities"], stored["train_indices"]),
    )
