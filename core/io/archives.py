"""Unpacking user zips safely, under caps against zip bombs, once per distinct content."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from core.io.files import file_digest, is_os_junk, replaced_atomically
from core.paths import safe_file_name
from core.records import Rejected

_COPY_CHUNK = 1 << 20

# Where zips given as dataset sources are unpacked, inside the workspace home, unless told otherwise.
UNPACKED_FOLDER = "unpacked"


@dataclass(frozen=True)
class ZipLimits:
    """What an uploaded zip may hold before it is refused as a likely zip bomb."""

    max_entries: int = 100_000  # members, directories included
    max_total_bytes: int = 8 * 2**30  # uncompressed bytes over all members, declared and written
    max_ratio: float = 200.0  # uncompressed/compressed size of one member; photos barely compress
    # Members smaller than this skip the ratio test: flat icons compress wildly yet are harmless.
    ratio_min_bytes: int = 1 << 20


def safe_extract_zip(zip_path: Path, dest: Path, limits: ZipLimits = ZipLimits()) -> list[Rejected]:
    """Extract the safe members of `zip_path` into `dest` and return the refused ones with reasons.

    Raises ValueError, before anything is written, when the archive breaks `limits` or is not a
    zip at all. Members with unsafe paths, symlinks, encryption, nested zips or bad data are
    refused one by one; OS junk (__MACOSX, .DS_Store) is skipped silently.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{zip_path} is not a readable zip archive: {exc}") from None
    with archive:
        members = archive.infolist()
        _check_zip_limits(zip_path, members, limits)
        Path(dest).mkdir(parents=True, exist_ok=True)
        root = Path(dest).resolve()
        rejected: list[Rejected] = []
        written: set[Path] = set()
        budget = limits.max_total_bytes
        for info in members:
            # ZipInfo.is_dir() fails on an empty name, which a hostile archive can carry.
            if info.filename.endswith("/") or is_os_junk(
                PurePosixPath(info.filename.replace("\\", "/")).parts
            ):
                continue
            target, reason = _zip_member_target(info, root)
            if target is not None and target in written:
                target, reason = None, "duplicate entry name in zip: only the first was extracted"
            if target is None:
                rejected.append(Rejected(info.filename, reason))
                continue
            try:
                budget -= _copy_member(archive, info, target, budget)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                # not when a file and a folder share the name: nothing was written
                if target.is_file():
                    target.unlink()
                rejected.append(Rejected(info.filename, _unextractable_reason(exc)))
                continue
            written.add(target)
    return rejected


def _check_zip_limits(zip_path: Path, members: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(members) > limits.max_entries:
        raise ValueError(
            f"{zip_path} has {len(members):,} entries; the limit is {limits.max_entries:,}"
        )
    total = sum(info.file_size for info in members)
    if total > limits.max_total_bytes:
        raise ValueError(
            f"{zip_path} would unpack to {total:,} bytes; the limit is {limits.max_total_bytes:,}"
        )
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise ValueError(
                f"{zip_path} looks like a zip bomb: entry {info.filename!r} expands "
                f"{ratio:,.0f}x ({info.compress_size:,} -> {info.file_size:,} bytes); "
                f"the limit is {limits.max_ratio:g}x"
            )


def _zip_member_target(info: zipfile.ZipInfo, root: Path) -> tuple[Path | None, str]:
    """Where a member may be written inside `root`, or None and the reason it may not."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts:
        return None, "entry without a file name: not extracted"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None, "absolute path in zip: not extracted"
    if ".." in parts:
        return None, "path in zip climbs out of the archive with '..': not extracted"
    if stat.S_ISLNK(info.external_attr >> 16):
        return None, "symbolic link in zip: not extracted"
    if info.flag_bits & 0x1:
        return None, "encrypted zip entry: not extracted"
    if name.lower().endswith(".zip"):
        return None, "nested zip archives are not opened"
    target = root.joinpath(*parts).resolve()
    if not target.is_relative_to(root) or target == root:
        return None, "path in zip resolves outside the extraction folder: not extracted"
    return target, ""


def _unextractable_reason(exc: Exception) -> str:
    if isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError)):
        return "a file and a folder in the zip share this name: not extracted"
    if isinstance(exc, OSError):
        return f"could not be written: {exc.strerror or exc}"
    return f"corrupt zip entry: {exc}"


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one member to `target` and return its size; a lying header cannot pass `budget`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    with archive.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            copied += len(chunk)
            if copied > budget:
                out.close()
                target.unlink()
                raise ValueError(
                    f"zip entry {info.filename!r} unpacks past the total size limit "
                    f"of {budget:,} bytes left; extraction stopped"
                )
            out.write(chunk)
    return copied


def unpacked_once(archive: Path, folder: Path) -> tuple[Path, list[Rejected]]:
    """The zip's safe members in a folder named by the zip's content hash, unpacked on first use only.

    Another run on the same zip reuses the folder and the refusals recorded beside it, so a large
    archive is neither unpacked twice nor left behind once per run. A run that dies while
    unpacking leaves a hidden staging folder, never a half-filled folder under the final name.
    """
    target = folder / f"{safe_file_name(archive.stem, 'archive')}-{file_digest(archive)[:16]}"
    record = target.with_name(f"{target.name}.refused.json")
    if target.is_dir() and record.is_file():
        try:
            return target, [Rejected(**entry) for entry in json.loads(record.read_text("utf-8"))]
        except (OSError, ValueError, TypeError):
            pass  # an unreadable record: unpack again
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=folder))
    try:
        rejected = safe_extract_zip(archive, staging)
        if not record.is_file():
            # a folder without its record was left incomplete
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another run on the same zip finished first: its folder holds the same files.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with replaced_atomically(record) as partial:
        partial.write_text(json.dumps([asdict(entry) for entry in rejected]), "utf-8")
    return target, rejected
