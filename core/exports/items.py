"""The items of an analysis as every export writes them (ids, splits, labels, predictions, flags, vectors), their thumbnails, and what an export wrote."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from core.analysis.pipeline import Analysis
from core.audit.findings import Audit, export_columns
from core.io.images import thumbnail_image
from core.prediction.predict import submission_cell
from core.progress import Watch
from core.records import DISTRACTOR, TEST, TRAIN
from core.search.index import Neighbours

# Label-similarity products computed in one matrix multiplication at most (queries × class rows).
_SIMILARITY_CELLS_PER_CALL = 1 << 22
# Images decoded between two progress reports.
_IMAGES_PER_STEP = 256
THUMBNAIL_STAGE = "making thumbnails"


@dataclass(frozen=True)
class ExportItems:
    """Every item of an analysis as the exports write it: train rows first, then test rows, in the analysis's order."""

    ids: np.ndarray  # (n,) str
    splits: np.ndarray  # (n,) "train" or "test"
    labels: np.ndarray  # (n,) object: the true class, None when unknown ("-1": a known distractor)
    vectors: np.ndarray  # (n, d) float32, unit rows
    predictions: list[
        list[str] | None
    ]  # the k labels of a test row with "-1" placed; None for train rows
    label_similarities: list[
        list[float | None] | None
    ]  # each predicted label's best cosine to train; None for "-1"
    flagged: list[bool | None]  # the distractor verdict of a test row; None for train rows
    scores: list[float | None]  # the distractor score of a test row; None for train rows
    image_paths: list[
        Path | None
    ]  # each item's image file; None when the source has none (an embeddings Parquet)
    test_neighbours: Neighbours  # each test item's nearest train images, as row numbers of train (the first rows)
    n_train: int
    model: str
    threshold: float
    rule: str  # how the distractors were flagged, for people
    placement: str
    k: int
    # the audit's findings of each item, by column name (core.audit.findings.EXPORT_COLUMNS); empty without an audit
    audit_columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return any(path is not None for path in self.image_paths)

    def caption(self, row: int) -> str:
        """One line naming the item, its class and, for a test item, its prediction."""
        label = self.labels[row] if self.labels[row] is not None else "unknown"
        if self.predictions[row] is None:
            return f"{self.ids[row]} · {label}"
        return (
            f"{self.ids[row]} · true {label} · predicted {submission_cell(self.predictions[row])}"
        )


def export_items(
    analysis: Analysis,
    image_paths: dict[str, Path] | None = None,
    threshold: float | None = None,
    flags: np.ndarray | None = None,
    rule: str | None = None,
    audit: Audit | None = None,
) -> ExportItems:
    """The rows of `analysis` with its predictions for `flags`, by default those of `threshold`, else of the analysis's own.

    `rule` says how the flags were chosen when that is not the analysis's rule (a threshold moved by hand, DBSCAN);
    `audit` (of this analysis) adds each item's findings at its default cuts.
    """
    flags = analysis.flags(threshold) if flags is None else np.asarray(flags, bool)
    if len(flags) != len(analysis.test.ids):
        raise ValueError(
            f"{len(flags)} distractor flags for {len(analysis.test.ids)} test items; give one per test item"
        )
    train, test = analysis.train, analysis.test
    predictions = analysis.predictions(flags=flags)
    paths = image_paths or {}
    ids = np.concatenate([train.ids, test.ids]).astype(str)
    n_train = len(train.ids)
    return ExportItems(
        ids=ids,
        splits=np.array([TRAIN] * n_train + [TEST] * len(test.ids)),
        labels=np.concatenate([train.labels, test.labels]).astype(object),
        vectors=np.vstack([train.vectors, test.vectors]).astype(np.float32),
        predictions=[None] * n_train + predictions,
        label_similarities=[None] * n_train + label_similarities(analysis, predictions),
        flagged=[None] * n_train + [bool(flag) for flag in flags],
        scores=[None] * n_train + [float(score) for score in analysis.scores],
        image_paths=[paths.get(item_id) for item_id in ids],
        test_neighbours=analysis.neighbours,
        n_train=n_train,
        model=train.model,
        threshold=float(analysis.threshold if threshold is None else threshold),
        rule=rule or analysis.threshold_source,
        placement=analysis.placement,
        k=analysis.config.k,
        audit_columns={} if audit is None else export_columns(audit, ids),
    )


def label_similarities(analysis: Analysis, rows: list[list[str]]) -> list[list[float | None]]:
    """For each test row, each label's best cosine similarity to a train image of that class; None for "-1".

    Computed class by class over the train images of that class, since a row's fifth label may lie
    past the neighbours the analysis kept.
    """
    train_labels = analysis.train.labels.astype(object)
    class_rows: dict[str, list[int]] = {}
    for index, label in enumerate(train_labels):
        class_rows.setdefault(label, []).append(index)
    wanted: dict[str, list[tuple[int, int]]] = {}
    for query, row in enumerate(rows):
        for position, label in enumerate(row):
            if label != DISTRACTOR:
                wanted.setdefault(label, []).append((query, position))
    similarities: list[list[float | None]] = [[None] * len(row) for row in rows]
    for label, cells in wanted.items():
        members = analysis.train.vectors[np.asarray(class_rows[label])]
        queries = np.array([query for query, _ in cells])
        block = max(1, _SIMILARITY_CELLS_PER_CALL // len(members))
        best = np.concatenate(
            [
                (analysis.test.vectors[queries[start : start + block]] @ members.T).max(axis=1)
                for start in range(0, len(queries), block)
            ]
        )
        for (query, position), value in zip(cells, best):
            similarities[query][position] = float(value)
    return similarities


def thumbnails(
    paths: list[Path | None], edge: int, watch: Watch = Watch()
) -> Iterator[Image.Image | None]:
    """Each image shrunk to fit `edge` pixels a side, in order; None where there is no image or it cannot be read."""
    for done, path in enumerate(paths):
        if done % _IMAGES_PER_STEP == 0:
            watch.step(done, len(paths), THUMBNAIL_STAGE)
        yield None if path is None else thumbnail_image(Path(path), edge)
    watch.step(len(paths), len(paths), THUMBNAIL_STAGE)


@dataclass(frozen=True)
class Exported:
    """What an export wrote and how to open it."""

    folder: Path
    files: list[Path]  # every file written, inside `folder`
    how_to_open: str  # the command (for FiftyOne, the Python) that opens the export in its tool
    notes: list[str] = field(default_factory=list)  # what was left out and why, for people
    # Files the export names by a path inside its folder but leaves where they lie: a zip carries
    # each under that name (FiftyOne's images, in a portable export).
    media: dict[str, Path] = field(default_factory=dict)


def zipped(exported: Exported) -> bytes:
    """The export's files as one zip, named relative to its folder, with its media (for a download)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in exported.files:
            archive.write(path, path.relative_to(exported.folder).as_posix())
        for name, path in exported.media.items():
            # Image formats are compressed already: deflating them again costs time and saves little.
            archive.write(path, name, zipfile.ZIP_STORED)
    return buffer.getvalue()
