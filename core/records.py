"""The shared data records every stage passes along: items, datasets, rejections and embedding tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

TRAIN = "train"
TEST = "test"
SPLITS = (TRAIN, TEST)
# Label of a test item known to come from a class that is not in train.
DISTRACTOR = "-1"


@dataclass(frozen=True)
class Item:
    """One image of a dataset."""

    id: str  # submission id: the file name, unique within the dataset
    split: str  # "train" or "test"
    label: str | None  # class name; None when unknown; "-1" for a known distractor
    path: Path  # image file on disk


@dataclass(frozen=True)
class Rejected:
    """A file that was not used, and why."""

    name: str  # the file's name as the user gave it (relative path or zip entry)
    reason: str  # one line a person can act on


@dataclass(frozen=True)
class Candidate:
    """A file a dataset layout names, before it is checked."""

    split: str
    label: str | None
    path: Path
    name: str  # relative path as the user sees it
    raw_label: object  # the label as the layout spelled it, before normalise_label


@dataclass
class Dataset:
    """Images found in a source, with everything that was refused."""

    name: str  # short name shown to users
    items: list[Item]  # accepted images, train first
    rejected: list[Rejected] = field(default_factory=list)  # files refused, with reasons

    def split(self, split: str) -> list[Item]:
        return [item for item in self.items if item.split == split]

    @property
    def has_test_truth(self) -> bool:
        test = self.split(TEST)
        return bool(test) and all(item.label is not None for item in test)

    def summary(self) -> str:
        return f"{len(self.items)} accepted, {len(self.rejected)} rejected"


@dataclass(frozen=True)
class Embeddings:
    """Vectors for the items of a dataset: the same columns as the Parquet format."""

    ids: np.ndarray  # (n,) str
    splits: np.ndarray  # (n,) str, "train" or "test"
    labels: np.ndarray  # (n,) object: str, or None when unknown
    vectors: np.ndarray  # (n, d) float32, L2-normalised rows
    model: str  # identity of the model that made the vectors

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.splits) == len(self.labels) == n == self.vectors.shape[0]):
            raise ValueError(
                f"columns differ in length: ids {n}, splits {len(self.splits)}, "
                f"labels {len(self.labels)}, vectors {self.vectors.shape[0]}"
            )

    def mask(self, split: str) -> np.ndarray:
        return self.splits == split

    def subset(self, split: str) -> Embeddings:
        """The items of one split; views of these columns when the split is one run of rows (train first, as
        datasets are read), since a copy of 100,000 vectors costs a tenth of a second or more in fresh memory."""
        keep = self.mask(split)
        rows = np.flatnonzero(keep)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            keep = slice(int(rows[0]), int(rows[-1]) + 1)
        return Embeddings(
            self.ids[keep], self.splits[keep], self.labels[keep], self.vectors[keep], self.model
        )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def joined(cls, parts: Sequence[Embeddings], model: str, dim: int) -> Embeddings:
        """The rows of `parts` in order as one table by `model`; no parts give no rows of `dim` columns."""
        empty = cls(
            np.array([], str),
            np.array([], str),
            np.array([], object),
            np.empty((0, dim), np.float32),
            model,
        )
        parts = [empty, *parts]  # numpy cannot concatenate no arrays
        return cls(
            ids=np.concatenate([part.ids for part in parts]),
            splits=np.concatenate([part.splits for part in parts]),
            labels=np.concatenate([part.labels for part in parts]),
            vectors=np.concatenate([part.vectors for part in parts]),
            model=model,
        )

    @cached_property
    def has_test_truth(self) -> bool:
        # Cached: pages ask on every rerun, and the columns of a loaded dataset never change.
        test_labels = self.labels[self.mask(TEST)]
        return len(test_labels) > 0 and all(label is not None for label in test_labels)
