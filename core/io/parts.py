"""Embeddings written as a folder of Parquet part files as they are computed, by one run at a time; what a folder holds, for resuming, and whether it is complete."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: there a folder is not guarded against two runs writing it at once
    fcntl = None

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

# Beside the parts; their leading "_" makes every Parquet reader skip them.
REJECTED_FILE = "_rejected.csv"
# Locked (flock) by the run writing the folder, which writes its pid there; the kernel unlocks it when that process ends, however.
LOCK_FILE = "_writing.lock"
# The folder's own record of its runs: {"expected": items the last run was given, "complete": whether it finished}.
STATUS_FILE = "_status.json"
PART_SUFFIX = ".parquet"
# A reader probing the lock holds it for microseconds: a run starting meanwhile tries again for this long.
LOCK_WAIT_SECONDS = 2.0


@dataclass
class _Hold:
    """A thread's hold on a folder: its locked lock file, and the items the run holding it was given."""

    handle: IO[str]
    expected: int | None
    started: bool = False  # whether the folder has been marked incomplete for this run


# Held folders by (resolved path, thread): a thread's writings of one folder nest (the Ray engine
# writes its first batch through embed_to_parquet); any other thread or process is refused.
_holds: dict[tuple[Path, int], _Hold] = {}


def _hold_key(folder: Path) -> tuple[Path, int]:
    return Path(folder).resolve(), threading.get_ident()


@contextmanager
def writing(folder: Path, expected: int | None = None) -> Iterator[None]:
    """Hold `folder` for writing parts; raises ValueError naming the pid when another run holds it.

    Take it before reading what the folder holds, so nothing another run writes is missed. The
    outermost holding given `expected` (the items the run embeds) is the run: its first PartWriter
    marks the folder incomplete, and leaving the block without an exception marks it complete.
    A run killed at any moment leaves the folder marked incomplete and unlocked.
    """
    key = _hold_key(folder)
    if key in _holds:
        yield
        return
    hold = _Hold(_locked(Path(folder)), expected)
    _holds[key] = hold
    try:
        yield
        if expected is not None:
            _write_status(Path(folder), expected, complete=True)
    finally:
        del _holds[key]
        hold.handle.close()


def _locked(folder: Path) -> IO[str]:
    """The folder's lock file, opened and locked by this process, with its pid in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held until the writing ends)
    except OSError as error:
        raise ValueError(f"cannot make the folder {folder}: {error.strerror or error}") from None
    if fcntl is not None and not _try_lock(handle, fcntl.LOCK_EX):
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not _try_lock(handle, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                handle.seek(0)
                pid = handle.read().strip()
                handle.close()
                raise ValueError(
                    f"another run is writing {folder}{f' (pid {pid})' if pid else ''}; wait for it to end, "
                    "or stop it and run this command again to finish what it leaves"
                )
            time.sleep(0.05)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _try_lock(handle: IO[str], kind: int) -> bool:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _being_written(folder: Path) -> bool:
    """Whether a run holds `folder`'s lock now (this thread's own holding counts)."""
    if _hold_key(folder) in _holds:
        return True
    if fcntl is None:
        return False
    try:
        with open(folder / LOCK_FILE, encoding="utf-8") as handle:
            return not _try_lock(handle, fcntl.LOCK_SH)
    except OSError:
        return False


def _write_status(folder: Path, expected: int, complete: bool) -> None:
    with replaced_atomically(folder / STATUS_FILE) as partial:
        partial.write_text(json.dumps({"expected": expected, "complete": complete}), "utf-8")


def _started(folder: Path) -> None:
    """Mark `folder` incomplete once its run (this thread's outermost holding) starts writing to it."""
    hold = _holds[_hold_key(folder)]
    if hold.expected is not None and not hold.started:
        _write_status(folder, hold.expected, complete=False)
        hold.started = True


@dataclass(frozen=True)
class Completion:
    """How far a folder's last run got: the rows in its parts against the items that run was given."""

    rows: int  # rows in the folder's parts
    expected: int  # items its last run was given to embed (refused files included)
    complete: bool  # whether that run finished
    being_written: bool  # whether a run holds the folder now

    def note(self, name: str) -> str | None:
        """One line for readers of an unfinished folder named `name`; None when it is complete."""
        if self.complete:
            return None
        why = (
            "a run is writing it"
            if self.being_written
            else "its last run stopped before the end; run the same embed command to finish it"
        )
        return f"{name} is incomplete: {self.rows:,} of {self.expected:,} images embedded, {why}"


def completion(folder: Path) -> Completion | None:
    """What `folder`'s status says of its last run, with its parts' rows counted; None when it keeps no status
    (not written by embed, or by a version before the status existed) or the status is unreadable."""
    folder = Path(folder)
    try:
        status = json.loads((folder / STATUS_FILE).read_text("utf-8"))
        expected, complete = int(status["expected"]), bool(status["complete"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = sum(pq.read_metadata(part).num_rows for part in part_files(folder))
    return Completion(rows, expected, complete, _being_written(folder))


def incomplete_note(folder: Path) -> str | None:
    """The line telling a reader that `folder` is not finished (see Completion.note); None when it is, or cannot tell."""
    state = completion(folder)
    return None if state is None else state.note(Path(folder).name)


class PartWriter:
    """Writes embeddings as part files in `folder`, and refused files to its `_rejected.csv`.

    Every part is complete or absent (written beside its name and moved into place), so a run
    killed at any moment leaves only whole parts, and a new writer on the same folder adds to them.
    A writer holds the folder (see writing) until closed: another run's writer is refused.
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
        holding = writing(self.folder)
        holding.__enter__()
        # Let go when closed, or at the latest when the writer is dropped.
        self._release = weakref.finalize(self, holding.__exit__, None, None, None)
        try:
            written = written_by(self.folder)
            if written is not None and written != (model, precision):
                raise ValueError(
                    f"{self.folder} holds parts by model {written[0]!r} in precision {written[1] or 'none'}, not by "
                    f"{model!r} in precision {precision or 'none'}; write to another folder, or embed with that model and precision"
                )
            self._next_part = len(part_files(self.folder))
            self._recorded = _recorded_rejections(self.folder / REJECTED_FILE)
        except BaseException:
            self.close()
            raise
        _started(self.folder)

    def close(self) -> None:
        """Let go of the folder (rows gathered and not flushed are not written)."""
        self._release()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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
