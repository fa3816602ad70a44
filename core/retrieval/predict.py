"""Top-k label predictions from neighbours, "-1" placement for distractors, and the submission CSV format."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.records import DISTRACTOR
from core.retrieval.index import Neighbours
from core.io.files import read_csv, replaced_atomically
from core.io.labels import normalise_label


def neighbours_needed(train_labels: Sequence[str], k: int = 5) -> int:
    """How many neighbours guarantee k distinct labels: k times the largest class (capped at train size)."""
    _, counts = np.unique(np.asarray(train_labels, dtype=object).astype(str), return_counts=True)
    return int(min(len(train_labels), k * counts.max()))


def rank_labels(neighbours: Neighbours, train_labels: Sequence[str], k: int = 5) -> list[list[str]]:
    """Up to k distinct labels per query, ranked by each class's best neighbour similarity.

    Rows are shorter than k only when train has fewer than k classes (or too few neighbours were
    searched: use `neighbours_needed`).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    labels = np.asarray(train_labels, dtype=object)
    rows = []
    # Neighbours come sorted by similarity, so a label's first appearance is its best match.
    for row_labels in labels[neighbours.indices]:
        rows.append(list(dict.fromkeys(row_labels))[:k])
    return rows


def place_distractor(rows: Sequence[Sequence[str]], flagged: np.ndarray, k: int = 5) -> list[list[str]]:
    """Flagged rows get "-1" first and their top k-1 labels after it (seed 001's format)."""
    if len(rows) != len(flagged):
        raise ValueError(f"{len(rows)} prediction rows but {len(flagged)} flags")
    return [[DISTRACTOR, *row[: k - 1]] if flag else list(row[:k]) for row, flag in zip(rows, flagged)]


SUBMISSION_COLUMNS = ("id", "predictions")


def submission_label(label: str) -> str:
    """A label as it stands in a space-separated submission: inner white space becomes "_"."""
    return "_".join(str(label).split())


def submission_csv(ids: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The submission as text: `id,predictions` with the labels space-separated, one row per test image."""
    if len(ids) != len(rows):
        raise ValueError(f"{len(ids)} ids but {len(rows)} prediction rows")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(SUBMISSION_COLUMNS)
    writer.writerows((image_id, " ".join(map(submission_label, row))) for image_id, row in zip(ids, rows))
    return buffer.getvalue()


def write_submission(path: Path | str, ids: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """Write `submission_csv(ids, rows)` to `path`, creating its folder; a failed write keeps the old file."""
    text = submission_csv(ids, rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as partial:
        partial.write_text(text, encoding="utf-8", newline="")
    return path


def _rows_by_id(path: Path | str, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV keyed by its `id` column, which must not repeat."""
    path = Path(path)
    rows, _ = read_csv(path, required)
    first: dict[str, int] = {}
    for row_number, row in enumerate(rows, start=2):
        if first.setdefault(row["id"], row_number) != row_number:
            raise ValueError(f"{path.name} repeats the id {row['id']!r} (rows {first[row['id']]} and {row_number})")
    return rows


def read_submission(path: Path | str) -> dict[str, list[str]]:
    """id → predicted labels, from a submission CSV."""
    return {row["id"]: row["predictions"].split() for row in _rows_by_id(path, SUBMISSION_COLUMNS)}


def read_truth(path: Path | str) -> dict[str, str]:
    """id → true label ("-1" for a distractor) as a submission spells it, from a CSV with columns id,label.

    Labels are read by the rules every dataset reader follows (normalise_label), so "-1.0" from a
    float column is the distractor label here as it is in `evaluate`.
    """
    truth = {}
    for row in _rows_by_id(path, ("id", "label")):
        try:
            label = normalise_label(row["label"])
        except ValueError:
            raise ValueError(f"{Path(path).name} has an empty label for id {row['id']!r}") from None
        truth[row["id"]] = submission_label(label)
    return truth
