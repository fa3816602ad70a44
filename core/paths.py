"""Where the project keeps its files, and user-given names and paths made safe to use on disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w.\- ]+")


def safe_file_name(name: str, fallback: str = "file") -> str:
    """A user-supplied name reduced to one harmless path component (no folders, no leading dots)."""
    last_part = re.split(r"[\\/]", str(name))[-1]
    cleaned = UNSAFE_NAME_CHARACTERS.sub("_", last_part).strip(" .")
    return cleaned[:120] or fallback


def confined_path(root: Path, relative: str) -> Path:
    """`relative` under `root`, refusing anything that resolves outside it (.., absolute paths, links)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise ValueError(
            f"{relative!r} is outside the data root {base}; only folders under it can be opened"
        )
    return target


def workspace_home() -> Path:
    """$RETRIEVAL_LAB_HOME, else retrieval-lab in the user's cache directory; created on demand."""
    configured = os.environ.get("RETRIEVAL_LAB_HOME")
    if configured:
        home = Path(configured).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retrieval-lab"
    home.mkdir(parents=True, exist_ok=True)
    return home
