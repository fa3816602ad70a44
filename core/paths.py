"""Where the project keeps its files, and user-given names and paths made safe to use on disk."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w.\- ]+")
# A Hugging Face Hub repository id: an optional owner and a name, without '..' (no path tricks).
HUB_REPO_ID = re.compile(r"(?!.*\.\.)[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
# Bytes of UTF-8 a user-given name may take once made safe. File systems allow 255 a component;
# the rest is room for what the code adds around a name: a content key, a copy number, a
# '.refused.json' record and the hidden partial file of an atomic write (about 75 bytes at most).
MAX_NAME_BYTES = 160
# A shortened name ends with this many hex digits of the whole name, so two long names stay apart.
_DIGEST_DIGITS = 10
# The longest suffix a shortened name keeps ('.jpeg', '.parquet'); a longer one is part of the stem.
_MAX_SUFFIX_BYTES = 16
# An absolute POSIX path inside a message: '/' starting a word, up to white space or punctuation
# that ends a path in prose.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s'\",;:()\[\]{}<>]+")


def safe_file_name(name: str, fallback: str = "file", max_bytes: int = MAX_NAME_BYTES) -> str:
    """A user-supplied name reduced to one harmless path component (no folders, no leading dots).

    At most `max_bytes` of UTF-8: a longer name keeps its start and its suffix, with a digest of
    the whole name between them, so two long names that share a start still get two files.
    """
    last_part = re.split(r"[\\/]", str(name))[-1]
    cleaned = UNSAFE_NAME_CHARACTERS.sub("_", last_part).strip(" .") or fallback
    if len(cleaned.encode()) <= max_bytes:
        return cleaned
    suffix = Path(cleaned).suffix
    if len(suffix.encode()) > _MAX_SUFFIX_BYTES:
        suffix = ""
    digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_DIGITS]
    room = max_bytes - len(suffix.encode()) - len(digest) - 1
    stem = cleaned[: len(cleaned) - len(suffix)].encode()[:room].decode("utf-8", "ignore")
    return f"{stem.rstrip(' .')}-{digest}{suffix}"


def resolved_inside(root: Path, relative: str | Path) -> Path | None:
    """`relative` joined to `root` and resolved (links followed), or None when that leaves `root`.

    An absolute `relative` stands for itself, so it is inside only if it lies under `root`.
    """
    base = Path(root).resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        return None
    return target if target.is_relative_to(base) else None


def confined_path(root: Path, relative: str) -> Path:
    """`relative` under `root`, refusing anything that resolves outside it (.., absolute paths, links)."""
    target = resolved_inside(root, relative)
    if target is None:
        raise ValueError(
            f"{relative!r} is outside the data root; only folders under it can be opened"
        )
    return target


def without_server_paths(text: object, named: Mapping[Path, str] | None = None) -> str:
    """`text` with the server's paths taken out, for a message shown to a dashboard user.

    Each folder of `named` (as given or resolved) becomes its name; any other absolute path
    becomes its last component, which is the user's own file name when the user gave one.
    """
    text = str(text)
    spellings = {
        str(spelling): shown
        for folder, shown in (named or {}).items()
        for spelling in (Path(folder), Path(folder).resolve())
    }
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, spellings[spelling])
    return _ABSOLUTE_PATH.sub(lambda match: Path(match.group()).name or "/", text)


def workspace_home() -> Path:
    """$RETRIEVAL_LAB_HOME, else retrieval-lab in the user's cache directory; created on demand."""
    configured = os.environ.get("RETRIEVAL_LAB_HOME")
    if configured:
        home = Path(configured).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retrieval-lab"
    home.mkdir(parents=True, exist_ok=True)
    return home


def data_root() -> Path:
    """The one folder a served dashboard may open datasets and model folders from ($RETRIEVAL_LAB_DATA_ROOT)."""
    configured = os.environ.get("RETRIEVAL_LAB_DATA_ROOT")
    root = Path(configured).expanduser() if configured else workspace_home() / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root
