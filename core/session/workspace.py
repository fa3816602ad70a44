"""Persistent user state — datasets and settings per workspace — in SQLite under the workspace home."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from core.paths import MAX_NAME_BYTES, safe_file_name, workspace_home

WORKSPACE_ID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_COPY_CHUNK = 1 << 20  # bytes an upload is written in, so a large one is never copied whole
_MKDTEMP_SUFFIX_BYTES = 9  # '-' and the 8 random characters of an upload folder's name


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset a user opened: where it is and what kind of source it is."""

    name: str  # shown to the user; unique within the workspace
    source: str  # folder, zip or Parquet path on the server
    kind: str  # "demo", "digits", "upload", "folder", "parquet" or "huggingface"


class Workspace:
    """One user's saved datasets and settings; the id travels in the page URL."""

    _lock = threading.Lock()

    def __init__(self, workspace_id: str, home: Path | None = None):
        if not WORKSPACE_ID.match(workspace_id or ""):
            raise ValueError(
                f"workspace id {workspace_id!r} is not valid: use 4–64 letters, digits, '-' or '_'"
            )
        self.id = workspace_id
        self.home = Path(home) if home else workspace_home()
        self._db = sqlite3.connect(
            self.home / "workspaces.sqlite", timeout=30, check_same_thread=False
        )
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS settings (workspace TEXT, key TEXT, value TEXT, updated REAL,"
                " PRIMARY KEY (workspace, key))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS datasets (workspace TEXT, name TEXT, source TEXT, kind TEXT,"
                " added REAL, PRIMARY KEY (workspace, name))"
            )

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(9).replace("_", "x").replace("-", "y")

    @property
    def files(self) -> Path:
        """This workspace's own folder, for uploads and extracted archives."""
        folder = self.home / "workspaces" / self.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def new_upload_folder(self, name: str) -> Path:
        """A fresh, empty folder for one upload, named after it: two uploads never share a folder, whenever they come."""
        # mkdtemp adds 8 characters after the prefix: the folder's name stays a safe name as it is.
        prefix = safe_file_name(name, "upload", MAX_NAME_BYTES - _MKDTEMP_SUFFIX_BYTES)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.files))

    def save_upload(self, folder: str, name: str, data: bytes | BinaryIO) -> Path:
        """Store an uploaded file in `folder` (a relative path, each part sanitised) under this workspace; never overwrites.

        `data` is the bytes or a file to copy from its start, a chunk at a time.
        """
        parts = [safe_file_name(part) for part in re.split(r"[\\/]", folder) if part.strip(" .")]
        target_folder = self.files.joinpath(*parts or ["upload"])
        target_folder.mkdir(parents=True, exist_ok=True)
        first = target_folder / safe_file_name(name)
        target, copy = first, 1
        while True:
            try:
                # Exclusive creation: two uploads of one name never write into one file.
                with open(target, "xb") as out:
                    if isinstance(data, bytes | bytearray | memoryview):
                        out.write(data)
                    else:
                        data.seek(0)
                        shutil.copyfileobj(data, out, _COPY_CHUNK)
                return target
            except FileExistsError:
                copy += 1
                target = first.with_name(f"{first.stem}-{copy}{first.suffix}")

    def get(self, key: str, default=None):
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM settings WHERE workspace=? AND key=?", (self.id, key)
            ).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value) -> None:
        encoded = json.dumps(value)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?)",
                (self.id, key, encoded, time.time()),
            )

    def settings(self, prefix: str = "") -> dict:
        """Every saved setting whose key starts with `prefix`, by key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM settings WHERE workspace=? AND substr(key, 1, ?)=?",
                (self.id, len(prefix), prefix),
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def get_config(self, key: str, config_type):
        """The config saved under `key`, or `config_type`'s defaults when none is saved or it is no longer valid."""
        saved = self.get(key)
        try:
            return config_type(**saved) if saved else config_type()
        except (TypeError, ValueError):
            return config_type()

    def set_config(self, key: str, config) -> None:
        self.set(key, asdict(config))

    def add_dataset(self, entry: DatasetEntry, reserved: Iterable[str] = ()) -> DatasetEntry:
        """Add `entry` under its name, or its name with the first free copy number ("name (2)"); returns it as added.

        The name is chosen and written in one write transaction, so two sessions or processes adding
        one name at once get two names and two rows. `reserved` names (the built-in datasets) are
        never taken.
        """
        taken = set(reserved)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # holds the write lock from the read to the insert
            taken.update(
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM datasets WHERE workspace=?", (self.id,)
                )
            )
            unique, copy = entry.name, 1
            while unique in taken:
                copy += 1
                unique = f"{entry.name} ({copy})"
            self._db.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?)",
                (self.id, unique, entry.source, entry.kind, time.time()),
            )
        return replace(entry, name=unique)

    def datasets(self) -> list[DatasetEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, source, kind FROM datasets WHERE workspace=? ORDER BY added",
                (self.id,),
            ).fetchall()
        return [DatasetEntry(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
