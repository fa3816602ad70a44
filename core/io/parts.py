"""Embeddings written as a folder of Parquet part files as they are computed; what a folder already holds, for resuming."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.io.files import read_csv, replaced_atomically
from core.io.parquet import (
    IGNORED_PREFIXES,
    MODEL_METADATA_KEY,
    PRECISION_METADATA_KEY,
    embeddings_table,
)
from core.records import Embeddings, Rejected

# Beside the parts; its leading "_" makes every Parquet reader skip it.
REJECTED_FILE = "_rejected.csv"
PART_SUFFIX = ".parquet"


class PartWriter:
    """Writes embeddings as part files in `folder`, and refused files to its `_rejected.csv`.

    Every part is complete or absent (written beside its name and moved into place), so a run
    killed at any moment leaves only whole parts, and a new writer on the same folder adds to them.
    write() makes one part at once; add() gathers rows and writes a part once `rows_per_part` are
    gathered, or `seconds_per_part` have passed since the last (a bound on the work a kill loses).
    """

    def __init__(
        self,
        folder: Path,
        model: str,
        precision: str | None = None,
        rows_per_part: int = 1,
        seconds_per_part: float | None = None,
    ) -> None:
        self.folder, self.model, self.precision = Path(folder), model, precision
        self.rows_per_part, self.seconds_per_part = rows_per_part, seconds_per_part
        self._gathered: list[Embeddings] = []
        self._gathered_rows, self._since = 0, time.monotonic()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"cannot make the folder {self.folder}: {error.strerror or error}"
            ) from None
        written = written_by(self.folder)
        if written is not None and written != (model, precision):
            raise ValueError(
                f"{self.folder} holds parts by model {written[0]!r} in precision {written[1] or 'none'}, not by "
                f"{model!r} in precision {precision or 'none'}; write to another folder, or embed with that model and precision"
            )
        self._next_part = len(part_files(self.folder))
        self._recorded = _recorded_rejections(self.folder / REJECTED_FILE)

    def write(self, embeddings: Embeddings) -> Path | None:
        """Write `embeddings` as one new part file and return its path; None when there are no rows."""
        self._check_model(embeddings)
        if len(embeddings.ids) == 0:
            return None
        table = embeddings_table(embeddings, self.precision)
        path = self.folder / f"part-{self._next_part:06d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        with replaced_atomically(path) as partial:
            pq.write_table(table, partial)
        self._next_part += 1
        return path

    def add(self, embeddings: Embeddings) -> None:
        """Gather `embeddings`; a part is written once enough rows, or enough time, has gathered."""
        self._check_model(embeddings)
        self._gathered.append(embeddings)
        self._gathered_rows += len(embeddings.ids)
        late = (
            self.seconds_per_part is not None
            and time.monotonic() - self._since >= self.seconds_per_part
        )
        if self._gathered_rows >= self.rows_per_part or late:
            self.flush()

    def flush(self) -> Path | None:
        """Write the gathered rows as one part (None when there are none) and start gathering anew."""
        gathered, self._gathered, self._gathered_rows, self._since = (
            self._gathered,
            [],
            0,
            time.monotonic(),
        )
        if not gathered:
            return None
        return self.write(Embeddings.joined(gathered, self.model, gathered[0].dim))

    def _check_model(self, embeddings: Embeddings) -> None:
        if embeddings.model != self.model:
            raise ValueError(
                f"embeddings by model {embeddings.model!r} cannot go into parts by {self.model!r}"
            )

    def rejected(self, rows: Sequence[Rejected]) -> None:
        """Append refused files (name, reason) to the folder's _rejected.csv; a row already there is not repeated."""
        fresh = [
            row
            for row in dict.fromkeys((row.name, row.reason) for row in rows)
            if row not in self._recorded
        ]
        if not fresh:
            return
        sidecar = self.folder / REJECTED_FILE
        text = io.StringIO()
        lines = csv.writer(text)
        if not sidecar.exists() or sidecar.stat().st_size == 0:
            lines.writerow(("name", "reason"))
        lines.writerows(fresh)
        # One write per call: a run killed meanwhile leaves whole rows, not half of one.
        with open(sidecar, "a", encoding="utf-8", newline="") as handle:
            handle.write(text.getvalue())
        self._recorded.update(fresh)


def part_files(folder: Path) -> list[Path]:
    """The Parquet part files of `folder` by name (none for a missing folder); refuses a folder holding anything else visible."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"{folder} is a file, not a folder of part files")
        return []
    visible = sorted(
        child for child in folder.iterdir() if not child.name.startswith(IGNORED_PREFIXES)
    )
    strangers = [
        child.name
        for child in visible
        if not (child.is_file() and child.suffix.lower() == PART_SUFFIX)
    ]
    if strangers:
        raise ValueError(
            f"{folder} holds {', '.join(strangers[:3])}{' …' if len(strangers) > 3 else ''}, which are not "
            "Parquet part files; give a new or empty folder, or one written by embed --out"
        )
    return visible


def written_by(folder: Path) -> tuple[str, str | None] | None:
    """The (model, precision) every part of `folder` was written by; None when it has no parts.

    Raises ValueError naming both when parts disagree, or naming the file when one is not Parquet.
    """
    found: dict[tuple[str, str | None], str] = {}
    for part in part_files(folder):
        try:
            metadata = pq.read_schema(part).metadata or {}
        except (pa.ArrowException, OSError) as error:
            raise ValueError(f"{part} is not a readable Parquet file: {error}") from None
        precision = metadata.get(PRECISION_METADATA_KEY)
        maker = (
            metadata.get(MODEL_METADATA_KEY, b"unknown").decode("utf-8", "replace"),
            None if precision is None else precision.decode("utf-8", "replace"),
        )
        found.setdefault(maker, part.name)
    if len(found) > 1:
        (first, first_part), (second, second_part) = list(found.items())[:2]
        raise ValueError(
            f"{folder} mixes parts by model {first[0]!r} ({first[1] or 'no precision'}, e.g. {first_part}) and "
            f"{second[0]!r} ({second[1] or 'no precision'}, e.g. {second_part}); keep one model per folder"
        )
    return next(iter(found), None)


def embedded_ids(folder: Path) -> set[str]:
    """The ids already in `folder`'s parts (only their id column is read); empty for a missing or empty folder."""
    ids: set[str] = set()
    for part in part_files(folder):
        try:
            column = pq.read_table(part, columns=["id"]).column("id")
        except (pa.ArrowException, OSError, KeyError) as error:
            raise ValueError(
                f"{part} is not a readable part file with an id column: {error}"
            ) from None
        ids.update(value for value in column.cast(pa.string()).to_pylist() if value is not None)
    return ids


def _recorded_rejections(sidecar: Path) -> set[tuple[str, str]]:
    if not sidecar.exists() or sidecar.stat().st_size == 0:
        return set()
    rows, _ = read_csv(sidecar, required=("name", "reason"))
    return {(row["name"], row["reason"]) for row in rows}
