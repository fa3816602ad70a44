"""The SQLite embedding cache, keyed by model identity and content hash, and the workspace location."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import numpy as np

# One definition of the workspace folder serves the cache and the per-user state.
from core.paths import workspace_home

__all__ = ["EmbeddingCache", "text_key", "workspace_home"]

CACHE_FILE_NAME = "embeddings.sqlite"
# A text key can never equal a hex digest of bytes, so an image and a text never share a row.
TEXT_KEY_PREFIX = "text:"
# Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 30
# Below SQLite's smallest default limit on host parameters per statement (999).
_KEYS_PER_QUERY = 500
# SQLite keeps recent writes in these files beside a WAL database; they belong to the file they sit next to.
SIDECAR_SUFFIXES = ("-wal", "-shm")


def text_key(text: str) -> str:
    """Cache key of a text prompt (an image's is core.io.files.file_digest of its bytes)."""
    return TEXT_KEY_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors by (model identity, key) in one SQLite file, shared safely between threads.

    Each put_many call is one transaction, so an interrupted run keeps every batch it finished.
    A file that is not a readable SQLite database is moved aside with a warning and replaced.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else workspace_home() / CACHE_FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.OperationalError:
            raise  # locked, unwritable or missing folder: the file itself may be fine, so leave it be
        except sqlite3.DatabaseError as error:
            moved_to = self._move_aside()
            warnings.warn(
                f"the embedding cache {self.path} was unreadable ({error}); it was moved to "
                f"{moved_to} and a new, empty cache was created",
                RuntimeWarning,
                stacklevel=2,
            )
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
        try:
            # Checked before anything writes, so a damaged file is moved aside exactly as found.
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {verdict}")
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key TEXT NOT NULL,"
                    " dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, key))"
                )
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        moved_to = self.path.with_name(
            f"{self.path.name}.corrupt-{datetime.now():%Y%m%d-%H%M%S-%f}"
        )
        for suffix in ("", *SIDECAR_SUFFIXES):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(f"{moved_to}{suffix}")
        return moved_to

    def get_many(self, model: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached float32 vectors among `keys`; missing keys are simply absent."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(unique), _KEYS_PER_QUERY):
                chunk = unique[start : start + _KEYS_PER_QUERY]
                rows = self._db.execute(
                    f"SELECT key, dim, vector FROM embeddings WHERE model = ? AND key IN ({','.join('?' * len(chunk))})",
                    (model, *chunk),
                ).fetchall()
                for key, dim, blob in rows:
                    # A row whose size disagrees with its dim is damaged: treat it as a miss.
                    if len(blob) == dim * 4:
                        found[key] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def put_many(self, model: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store `vectors` for `model` in one transaction, replacing earlier values."""
        rows = []
        for key, vector in vectors.items():
            flat = np.asarray(vector, dtype="<f4")
            if flat.ndim != 1 or not np.isfinite(flat).all():
                raise ValueError(
                    f"vector for key {key!r} must be one finite row of numbers, got shape {flat.shape}"
                )
            rows.append((model, key, flat.size, flat.tobytes()))
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
        except sqlite3.OperationalError as error:
            # A full disk or a lost file: the transaction is rolled back and earlier rows stay readable.
            raise OSError(
                f"could not write to the embedding cache {self.path}: {error}; "
                "the vectors cached before are kept, so a re-run resumes from them"
            ) from error

    def count(self, model: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model = ?", (model,)
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
