"""Results kept on disk under a content key: one `.npz` of arrays per key, written whole and durably, checked against its key and shapes on read, deleted and recomputed when it cannot be used."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

from core.io.files import replaced_atomically

Stored = TypeVar("Stored")
# The shape each named array must have, None where any length goes.
Shapes = Mapping[str, tuple[int | None, ...]]

# The array in every stored file that holds the key it was written under. The key is the digest of
# the inputs, so a file copied, restored or renamed from another key (another dataset's results,
# perhaps of the very same shapes) is told apart from the one computed for these inputs.
INPUTS_DIGEST = "inputs_digest"


def arrays_digest(kind: str, arrays: Iterable[np.ndarray], settings: str) -> str:
    """sha256 over `kind` (a format name, bumped when the stored layout changes), each array's dtype, shape and bytes, and `settings`.

    Every byte is hashed: a digest of a sample would give two inputs differing off the sample one
    key, and one's results to the other. With the CPU's SHA instructions it costs about 0.1 s for
    100k × 512 float32 vectors, under 1% of their first analysis.
    """
    digest = hashlib.sha256(kind.encode())
    for rows in arrays:
        rows = np.ascontiguousarray(rows)
        digest.update(f"{rows.dtype.str}{rows.shape}".encode())
        digest.update(memoryview(rows).cast("B"))
    digest.update(settings.encode())
    return digest.hexdigest()


class ArrayStore:
    """One `<key>.npz` per result under `directory`; `what` names the results in warnings."""

    def __init__(self, directory: Path, what: str) -> None:
        self.directory = Path(directory)
        self.what = what

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def get(
        self, key: str, decode: Callable[[Mapping[str, np.ndarray]], Stored], shapes: Shapes
    ) -> Stored | None:
        """`decode` of the arrays stored under `key`, or None when there are none or they cannot be used.

        A file that cannot be used (unreadable, truncated, written under another key, or lacking an
        array of its shape in `shapes`) is deleted with a one-line warning: the caller then computes
        the result again and stores it whole. Arrays are loaded without pickle: a stored file can
        hold numbers and text only.
        """
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                read = os.fstat(handle.fileno())
                found, problem = _decoded(handle, key, decode, shapes)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            self._warn(path, f"cannot be opened ({error.strerror})")
            return None
        if problem is None:
            return found
        with contextlib.suppress(OSError):  # gone already, or not removable: put() replaces it
            now = path.stat()
            # Not if another writer has replaced it since it was read: that one is whole.
            if (now.st_ino, now.st_mtime_ns) == (read.st_ino, read.st_mtime_ns):
                path.unlink()
        self._warn(path, problem)
        return None

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store atomically and durably, with `key` beside the arrays, so a crash or a power loss never leaves a half file under the key.

        A store that cannot be written only warns: the caller keeps what it computed.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (
                replaced_atomically(self.path(key)) as unfinished,
                open(unfinished, "wb") as handle,
            ):
                np.savez(handle, **arrays, **{INPUTS_DIGEST: np.array(key)})
        except OSError as error:
            warnings.warn(f"{self.what} not cached in {self.directory}: {error}", stacklevel=3)

    def _warn(self, path: Path, problem: str) -> None:
        # One line, naming the file but not the server folder it lies in.
        message = " ".join(f"stored {self.what} {path.name} {problem}; computing again".split())
        warnings.warn(message, stacklevel=4)


def _decoded(
    handle, key: str, decode: Callable[[Mapping[str, np.ndarray]], Stored], shapes: Shapes
) -> tuple[Stored | None, str | None]:
    """`decode` of the arrays in the open file, or why they cannot be used."""
    try:
        with np.load(handle, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    # zipfile and numpy raise whatever damaged bytes lead them to (BadZipFile, EOFError, ValueError,
    # NotImplementedError for a flipped compression method, …): each means the file is unusable.
    except Exception as error:
        return None, f"cannot be read ({type(error).__name__}: {error})"
    problem = _mismatch(arrays, key, shapes)
    if problem is not None:
        return None, problem
    try:
        return decode(arrays), None
    except (ValueError, KeyError, TypeError, IndexError) as error:
        return None, f"cannot be decoded ({type(error).__name__}: {error})"


def _mismatch(arrays: Mapping[str, np.ndarray], key: str, shapes: Shapes) -> str | None:
    """Why stored arrays are not the result for `key`: another key's file, or an array missing or of another shape; None when they are."""
    digest = arrays.get(INPUTS_DIGEST)
    if digest is None:
        return "holds no digest of its inputs"
    if digest.shape != () or str(digest) != key:
        return "was computed from other inputs"
    for name, shape in shapes.items():
        if name not in arrays:
            return f"lacks {name}"
        found = arrays[name].shape
        if len(found) != len(shape) or any(
            wanted not in (None, length) for wanted, length in zip(shape, found)
        ):
            shown = tuple("any" if wanted is None else wanted for wanted in shape)
            return f"holds {name} of shape {found}, not {shown}"
    return None
