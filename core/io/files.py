"""What every input reader shares: atomic, durable file replacement, content digests, CSV and text decoding, OS leftovers, refusal summaries."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from core.records import Rejected

# Files operating systems and archivers leave behind; skipped without a rejection.
_OS_JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})


def refusal_examples(rejected: list[Rejected], before: str = ": ", after: str = "") -> str:
    """A short account of refusals for one message: the count and the first few reasons."""
    if not rejected:
        return ""
    shown = "; ".join(f"{r.name}: {r.reason}" for r in rejected[:3])
    return f"{before}{len(rejected)} rejected, e.g. {shown}{after}"


def bytes_digest(data: bytes) -> str:
    """The SHA-256 of some bytes, in hex: what names content (an image in the cache, an upload)."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """bytes_digest of a file's bytes, read in chunks rather than all at once."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A path beside `path` to write to; it replaces `path` only if the block succeeds.

    A failure (a full disk, an interrupted write) leaves the previous file untouched and no partial
    file behind. Each call writes to its own hidden name, so two writers of the same file never
    write into one partial file; the last to finish wins whole. The file reaches the disk before it
    takes the name, and the rename after, so a power loss leaves the old file or the new one whole,
    never an empty or truncated one under the name.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        yield partial
        with open(partial, "rb+") as written:  # Windows flushes only a handle open for writing
            os.fsync(written.fileno())
        os.replace(partial, path)
        _sync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk."""
    if os.name == "nt":
        return  # Windows cannot open a folder to flush it
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some file systems (network and FUSE mounts) cannot sync a folder: the file itself is synced.
        if error.errno != errno.EINVAL:
            raise
    finally:
        os.close(descriptor)


def read_csv(
    csv_path: Path, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> tuple[list[dict[str, str]], list[str]]:
    """Rows keyed by lower-cased, stripped column names, and those names; blank rows are skipped.

    A short row gets "" for its missing cells. Raises ValueError naming the file when it is
    missing, not UTF-8, not CSV, or lacks one of the `required` columns (`optional` ones are
    only named in that message).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} not found (or not a file)")
    with text_file_errors(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        rows = [
            {column: values[i] if i < len(values) else "" for i, column in enumerate(header)}
            for values in reader
            if any(v.strip() for v in values)
        ]
    missing = [column for column in required if column not in header]
    if missing:
        raise ValueError(
            f"{csv_path.name} lacks column(s) {', '.join(missing)}: found "
            f"{', '.join(header) or 'no columns'}; required: {', '.join(required)}"
            + (f"; optional: {', '.join(optional)}" if optional else "")
        )
    return rows, header


@contextlib.contextmanager
def text_file_errors(path: Path) -> Iterator[None]:
    """Undecodable bytes and malformed CSV become one ValueError naming the file, not a traceback."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path.name} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{path.name} is not a readable CSV file: {exc}") from None


def is_os_junk(parts: Iterable[str]) -> bool:
    """Hidden files and OS leftovers; '..' is not hidden but a path trick, refused elsewhere."""
    return any(
        (part.startswith(".") and part not in (".", "..")) or part.lower() in _OS_JUNK_NAMES
        for part in parts
    )
