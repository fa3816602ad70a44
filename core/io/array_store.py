"""Results kept on disk under a content key: one `.npz` of arrays per key, written atomically, recomputed when unreadable."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

from core.io.files import replaced_atomically

Stored = TypeVar("Stored")


def content_key(kind: str, arrays: Iterable[np.ndarray], settings: str) -> str:
    """sha256 over `kind` (a format name, bumped when the stored layout changes), each array's dtype, shape and bytes, and `settings`."""
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

    def get(self, key: str, decode: Callable[[Mapping[str, np.ndarray]], Stored]) -> Stored | None:
        """`decode` of the stored arrays, or None when absent or unreadable (the caller then recomputes).

        Arrays are loaded without pickle: a stored file can hold numbers and text only.
        """
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return decode(stored)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            warnings.warn(
                f"ignoring unreadable cached {self.what} {path.name}: {error}", stacklevel=3
            )
            return None

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store atomically, so a crash mid-write never leaves a half file under the key.

        A store that cannot be written only warns: the caller keeps what it computed.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (
                replaced_atomically(self.path(key)) as unfinished,
                open(unfinished, "wb") as handle,
            ):
                np.savez(handle, **arrays)
        except OSError as error:
            warnings.warn(f"{self.what} not cached in {self.directory}: {error}", stacklevel=3)
