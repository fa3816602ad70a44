"""Safe loading of user input: images, dataset folders, CSVs and zips, embedding Parquet, texts."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.embedding.cache import file_key
from core.records import DISTRACTOR, SPLITS, TEST, TRAIN, Dataset, Embeddings, Item, Rejected
from core.paths import workspace_home

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)
MODEL_METADATA_KEY = b"retrieval_lab.model"
EMBEDDING_COLUMNS = ("id", "split", "label", "embedding")
TEXT_COLUMN_NAMES = ("text", "prompt", "caption")

# Files operating systems and archivers leave behind; skipped without a rejection.
_OS_JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_SNIFF_BYTES = 512
_COPY_CHUNK = 1 << 20
_SVG_REASON = "not an image (looks like SVG/XML; only raster images are supported)"
_NOT_IMAGE_REASON = "not an image (the contents are not a raster format Pillow can read)"
_DISTRACTOR_IN_TRAIN = f"label {DISTRACTOR} marks test distractors and cannot be a train class"
# Everything a Pillow decoder raises on damaged data.
# Pillow merely warns between one and two times the pixel limit; _open refuses those itself, without
# the process-wide warning filters that catch_warnings would swap under concurrent threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error
)

# Never decode a partial image silently: a truncated file must be rejected, not half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """An input that is not a usable raster image; `reason` is one line a person can act on."""

    def __init__(self, reason: str, name: str = "") -> None:
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason
        self.name = name


def _examples(rejected: list[Rejected], before: str = ": ", after: str = "") -> str:
    """A short account of refusals for one message: the count and the first few reasons."""
    if not rejected:
        return ""
    shown = "; ".join(f"{r.name}: {r.reason}" for r in rejected[:3])
    return f"{before}{len(rejected)} rejected, e.g. {shown}{after}"


# --------------------------------------------------------------------------- images


def load_image(source: Path | bytes, name: str = "", draft_size: int | None = None) -> Image.Image:
    """Decode `source` fully into an RGB image the way a person would see it.

    EXIF orientation is applied, transparency is composited on white, every other colour mode
    becomes RGB and animations give their first frame. Raises ImageRejected with a reason for
    empty, non-image, SVG, truncated, corrupt and decompression-bomb inputs. `draft_size` lets
    JPEGs decode at a reduced scale that is still at least that many pixels on each side.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive pixel count or None, got {draft_size}")
    name = name or _default_name(source)
    with _refusals(name), _open(source, name) as img:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img, name)


def check_image_file(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None; reads the header only, never the pixels."""
    try:
        with _refusals(path.name), _open(path, path.name):
            return None
    except ImageRejected as exc:
        return exc.reason


def _default_name(source: Path | bytes) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else ""


@contextlib.contextmanager
def _refusals(name: str) -> Iterator[None]:
    """Turn Pillow's many failure modes into ImageRejected."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(_bomb_reason(exc), name) from None
    except UnidentifiedImageError:
        raise ImageRejected(_NOT_IMAGE_REASON, name) from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}", name) from None


def _bomb_reason(exc: Exception) -> str:
    # Pillow reports the pixel count only once it has refused, never the width and height.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"decompression bomb: {pixels} exceeds the limit of {Image.MAX_IMAGE_PIXELS:,}"


def _open(source: Path | bytes, name: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:_SNIFF_BYTES])
    else:
        try:
            with open(source, "rb") as handle:
                head = handle.read(_SNIFF_BYTES)
        except OSError as exc:
            raise ImageRejected(f"cannot read file: {exc.strerror or exc}", name) from None
    if not head:
        raise ImageRejected("empty file", name)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise ImageRejected(_SVG_REASON, name)
    img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    pixels = img.width * img.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise ImageRejected(
            f"decompression bomb: {pixels:,} pixels ({img.width}x{img.height}) exceeds the limit of "
            f"{Image.MAX_IMAGE_PIXELS:,}",
            name,
        )
    return img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if img.mode in ("I", "F"):
        return _grey_to_rgb(_stretch(np.asarray(img, dtype=np.float64)))
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageRejected(f"colour mode {img.mode} cannot be converted to RGB", name) from None


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the observed range onto 0..255: 32-bit and float images carry no fixed white level."""
    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    return (finite - low) * (255.0 / (high - low)) if high > low else np.zeros_like(finite)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")


# --------------------------------------------------------------------------- zips

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
            if info.filename.endswith("/") or _is_os_junk(PurePosixPath(info.filename.replace("\\", "/")).parts):
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
                if target.is_file():  # not when a file and a folder share the name: nothing was written
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


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class _Candidate:
    """A file a dataset layout names, before it is checked."""

    split: str
    label: str | None
    path: Path
    name: str  # relative path as the user sees it


def _unpacked_once(archive: Path, folder: Path) -> tuple[Path, list[Rejected]]:
    """The zip's safe members in a folder named by the zip's content hash, unpacked on first use only.

    Another run on the same zip reuses the folder and the refusals recorded beside it, so a large
    archive is neither unpacked twice nor left behind once per run. A run that dies while
    unpacking leaves a hidden staging folder, never a half-filled folder under the final name.
    """
    target = folder / f"{archive.stem}-{file_key(archive)[:16]}"
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
            shutil.rmtree(target, ignore_errors=True)  # a folder without its record was left incomplete
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


def load_dataset(source: str | Path, work_dir: Path | None = None) -> Dataset:
    """Read a dataset from a folder, a train.csv, or a .zip of either.

    Folder layout: train/<label>/<images>, and test/<images> or test/<label>/<images> ("-1" for
    distractors). CSV layout: train.csv (image,label) with paths relative to the CSV, plus an
    optional test.csv (image[,label]); without test.csv the test/ folder is used. A zip is
    extracted safely, once per distinct content, into a folder under `work_dir` (by default
    ``unpacked`` in the workspace home), which is kept because the items point into it. Each file
    gets a header check only; refused files land in Dataset.rejected and the rest loads. Raises
    ValueError when no train image is usable.
    """
    source = Path(source).resolve()
    if not source.exists():
        raise ValueError(f"dataset source {source} does not exist")
    rejected: list[Rejected] = []
    if source.is_file() and source.suffix.lower() == ".zip":
        name = source.stem
        extracted, refused = _unpacked_once(source, Path(work_dir) if work_dir else workspace_home() / UNPACKED_FOLDER)
        rejected += refused
        root = _layout_root(extracted, source)
        train_csv = root / "train.csv"
    elif source.is_file() and source.suffix.lower() == ".csv":
        name, root, train_csv = source.parent.name, source.parent, source
    elif source.is_dir():
        name = source.name
        root = _layout_root(source, source)
        train_csv = root / "train.csv"
    else:
        raise ValueError(
            f"unsupported dataset source {source}: expected a folder, a .zip or a train.csv"
        )
    if train_csv.is_file():
        candidates = _csv_candidates(train_csv, root, rejected)
    else:
        candidates = _folder_candidates(root, rejected)
    items = _accept(candidates, rejected)
    if not any(item.split == TRAIN for item in items):
        raise ValueError(
            f"the train split of {source} is empty: no usable images under train/<label>/ or "
            f"in train.csv{_examples(rejected, ' (', ')')}"
        )
    return Dataset(name=name, items=items, rejected=rejected)


def _layout_root(folder: Path, source: Path) -> Path:
    """The folder holding train/ or train.csv: `folder` itself or its only subfolder."""
    if _has_layout(folder):
        return folder
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not _is_os_junk((p.name,))]
    if len(subfolders) == 1 and _has_layout(subfolders[0]):
        return subfolders[0]
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise ValueError(
        f"no dataset layout in {source}: expected train/<label>/ folders or a train.csv "
        f"(optionally inside one top-level folder); found {found}"
    )


def _has_layout(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "train.csv").is_file()


def _folder_candidates(root: Path, rejected: list[Rejected]) -> list[_Candidate]:
    candidates = []
    for path in _files_under(root / TRAIN):
        relative = path.relative_to(root)
        if len(relative.parts) < 3:
            reason = "train image outside a label folder: put it in train/<label>/"
            rejected.append(Rejected(relative.as_posix(), reason))
        elif relative.parts[1].strip() == DISTRACTOR:
            rejected.append(Rejected(relative.as_posix(), _DISTRACTOR_IN_TRAIN))
        else:
            label = relative.parts[1].strip()
            candidates.append(_Candidate(TRAIN, label, path, relative.as_posix()))
    return candidates + _test_folder_candidates(root)


def _test_folder_candidates(root: Path) -> list[_Candidate]:
    candidates = []
    for path in _files_under(root / TEST):
        relative = path.relative_to(root)
        label = relative.parts[1].strip() if len(relative.parts) >= 3 else None
        candidates.append(_Candidate(TEST, label, path, relative.as_posix()))
    return candidates


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _csv_candidates(train_csv: Path, root: Path, rejected: list[Rejected]) -> list[_Candidate]:
    candidates = _csv_rows(train_csv, TRAIN, root, rejected, label_required=True)
    test_csv = train_csv.with_name("test.csv")
    if test_csv.is_file():
        return candidates + _csv_rows(test_csv, TEST, root, rejected, label_required=False)
    return candidates + _test_folder_candidates(root)


def _csv_rows(
    csv_path: Path, split: str, root: Path, rejected: list[Rejected], label_required: bool
) -> list[_Candidate]:
    required = ("image", "label") if label_required else ("image",)
    rows, columns = _read_csv(csv_path)
    missing = [column for column in required if column not in columns]
    if missing:
        raise ValueError(
            f"{csv_path.name} is missing column(s) {', '.join(missing)}: found "
            f"{', '.join(columns) or 'no columns'}; required: {', '.join(required)}"
            + ("" if label_required else " (label optional)")
        )
    candidates = []
    for row_number, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        where = f"{csv_path.name} row {row_number}"
        label = (row.get("label") or "").strip() if "label" in columns else None
        if not image:
            rejected.append(Rejected(where, "empty image path"))
        elif label == "":
            rejected.append(Rejected(image, f"empty label in {where}"))
        elif split == TRAIN and label == DISTRACTOR:
            rejected.append(Rejected(image, f"{where}: {_DISTRACTOR_IN_TRAIN}"))
        else:
            path, problem = _listed_file(csv_path.parent, image, root)
            if path is None:
                rejected.append(Rejected(image, f"{where}: {problem}"))
            else:
                candidates.append(_Candidate(split, label, path, path.relative_to(root).as_posix()))
    return candidates


def _listed_file(base: Path, image: str, root: Path) -> tuple[Path | None, str]:
    """The file a CSV cell names, relative to the CSV or, Kaggle style, inside images/."""
    for folder in (base, base / "images"):
        # normpath rather than resolve: '..' tricks are refused, a user's own symlinks are not.
        path = Path(os.path.normpath(folder / image))
        if not path.is_relative_to(root):
            return None, "path points outside the dataset folder"
        if path.is_file():
            return path, ""
    return None, "no such file"


def _read_csv(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows keyed by lower-cased, stripped column names, and those names."""
    with _text_file_errors(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        rows = [dict(zip(header, values)) for values in reader if any(v.strip() for v in values)]
    return rows, header


@contextlib.contextmanager
def _text_file_errors(path: Path) -> Iterator[None]:
    """Undecodable bytes and malformed CSV become one ValueError naming the file, not a traceback."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path.name} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{path.name} is not a readable CSV file: {exc}") from None


def _is_os_junk(parts: Iterable[str]) -> bool:
    """Hidden files and OS leftovers; '..' is not hidden but a path trick, refused elsewhere."""
    return any(
        (part.startswith(".") and part not in (".", "..")) or part.lower() in _OS_JUNK_NAMES
        for part in parts
    )


def _accept(candidates: list[_Candidate], rejected: list[Rejected]) -> list[Item]:
    """Check each candidate cheaply and give the accepted ones unique ids, in a stable order."""
    items: list[Item] = []
    used_ids: set[str] = set()
    seen: set[tuple[str, Path]] = set()
    for candidate in sorted(candidates, key=lambda c: (SPLITS.index(c.split), c.name)):
        if _is_os_junk(PurePosixPath(candidate.name).parts):
            continue
        reason = _candidate_problem(candidate, seen)
        if reason:
            rejected.append(Rejected(candidate.name, reason))
            continue
        seen.add((candidate.split, candidate.path))
        item_id = _unique_id(candidate, used_ids)
        used_ids.add(item_id)
        items.append(Item(item_id, candidate.split, candidate.label, candidate.path))
    return items


def _candidate_problem(candidate: _Candidate, seen: set[tuple[str, Path]]) -> str | None:
    suffix = candidate.path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        return f"not an image file type ({suffix or 'no extension'}); accepted: {accepted}"
    if (candidate.split, candidate.path) in seen:
        return f"listed more than once in {candidate.split}: only the first is used"
    return check_image_file(candidate.path)


def _unique_id(candidate: _Candidate, used_ids: set[str]) -> str:
    """The file name, as Kaggle submissions expect; a clash falls back to the relative path."""
    if candidate.path.name not in used_ids:
        return candidate.path.name
    item_id, copy = candidate.name, 2
    while item_id in used_ids:
        item_id, copy = f"{candidate.name}#{copy}", copy + 1
    return item_id


# --------------------------------------------------------------------------- embeddings


def write_embeddings(path: Path, emb: Embeddings) -> None:
    """Write `emb` as Parquet (id, split, label, embedding) with the model in the schema metadata.

    The file is written beside `path` and moved into place, so a failure never leaves a half
    file where a good one was.
    """
    path = Path(path)
    vectors = np.ascontiguousarray(emb.vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embedding vectors must be 2-D (rows, dim), got shape {vectors.shape}")
    n, dim = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim, pa.int32())
    table = pa.table(
        {
            "id": pa.array([str(i) for i in emb.ids], pa.string()),
            "split": pa.array([str(s) for s in emb.splits], pa.string()),
            "label": pa.array([_label_or_none(label) for label in emb.labels], pa.string()),
            "embedding": pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel(), pa.float32())),
        }
    ).replace_schema_metadata({MODEL_METADATA_KEY: emb.model.encode()})
    with replaced_atomically(path) as partial:
        pq.write_table(table, partial)


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A path beside `path` to write to; it replaces `path` only if the block succeeds.

    A failure (a full disk, an interrupted write) leaves the previous file untouched and no partial
    file behind.
    """
    partial = Path(path).with_name(f".{Path(path).name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_embeddings(path: Path) -> Embeddings:
    """Read an embeddings Parquet file; rows dropped as unusable are reported in a warning."""
    emb, dropped = read_embeddings_checked(path)
    if dropped:
        message = f"{path}: dropped row(s) with unusable embeddings{_examples(dropped)}"
        warnings.warn(message, stacklevel=2)
    return emb


def read_embeddings_checked(path: Path) -> tuple[Embeddings, list[Rejected]]:
    """Read and validate an embeddings Parquet file; returns the usable rows and the dropped ones.

    Raises ValueError for a file that is not Parquet, missing columns, split values other than
    train/test, a non-numeric embedding column or rows of different lengths. Rows with a missing
    id or vector, NaN/inf values, a zero vector or a repeated id are dropped. Vectors come back
    as float32 with unit L2 norm.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    missing = [column for column in EMBEDDING_COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} is missing column(s) {', '.join(missing)}: found "
            f"{', '.join(table.column_names)}; required: {', '.join(EMBEDDING_COLUMNS)}"
        )
    ids = table.column("id").cast(pa.string()).to_pylist()
    splits = table.column("split").cast(pa.string()).to_pylist()
    labels = [_label_or_none(label) for label in table.column("label").to_pylist()]
    bad_splits = ", ".join(sorted({repr(s) for s in splits if s not in SPLITS}))
    if bad_splits:
        raise ValueError(
            f"{path}: split column has value(s) {bad_splits}; allowed: {', '.join(SPLITS)}"
        )
    vectors, present = _embedding_matrix(path, table.column("embedding"))
    metadata = table.schema.metadata or {}
    model = metadata.get(MODEL_METADATA_KEY, b"unknown").decode("utf-8", "replace")

    keep, dropped = _usable_rows(ids, vectors, present)
    norms = np.linalg.norm(vectors[keep].astype(np.float64), axis=1, keepdims=True)
    emb = Embeddings(
        ids=np.array([ids[i] for i in keep], dtype=str),
        splits=np.array([splits[i] for i in keep], dtype=str),
        labels=np.array([labels[i] for i in keep], dtype=object),
        vectors=(vectors[keep] / norms).astype(np.float32),
        model=model,
    )
    return emb, dropped


def _embedding_matrix(path: Path, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The (n, d) float32 matrix of the embedding column and which rows had a vector at all."""
    kind = column.type
    list_kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    number_kinds = (pa.types.is_floating, pa.types.is_integer)
    if not any(is_kind(kind) for is_kind in list_kinds) or not any(
        is_kind(kind.value_type) for is_kind in number_kinds
    ):
        raise ValueError(f"{path}: embedding column has type {kind}; expected a list of floats")
    column = column.combine_chunks()
    present = column.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)[present]
    dims = sorted({int(d) for d in lengths})
    if len(dims) > 1:
        raise ValueError(
            f"{path}: embeddings have different lengths ({', '.join(map(str, dims))}); "
            "all rows must match"
        )
    dim = dims[0] if dims else 0
    if present.any() and dim == 0:
        raise ValueError(f"{path}: embeddings are empty lists")
    values = pc.list_flatten(column.filter(pa.array(present))).cast(pa.float32())
    matrix = np.full((len(present), dim), np.nan, dtype=np.float32)
    matrix[present] = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return matrix, present


def _label_or_none(label: object) -> str | None:
    return None if label is None else str(label)


def _usable_rows(
    ids: list[str | None], vectors: np.ndarray, present: np.ndarray
) -> tuple[list[int], list[Rejected]]:
    keep: list[int] = []
    dropped: list[Rejected] = []
    first_row: dict[str, int] = {}
    finite = np.isfinite(vectors).all(axis=1)
    nonzero = np.abs(vectors).max(axis=1, initial=0.0) > 0
    for row, row_id in enumerate(ids):
        name = row_id if row_id is not None else f"row {row}"
        if row_id is None:
            reason = "missing id"
        elif not present[row]:
            reason = "missing embedding"
        elif not finite[row]:
            reason = "embedding has NaN or infinite values"
        elif not nonzero[row]:
            reason = "embedding is all zeros (norm 0)"
        elif row_id in first_row:
            reason = f"id repeated (first at row {first_row[row_id]})"
        else:
            first_row[row_id] = row
            keep.append(row)
            continue
        dropped.append(Rejected(name, reason))
    return keep, dropped


# --------------------------------------------------------------------------- texts


def load_texts(path: Path, column: str | None = None) -> list[str]:
    """Non-empty stripped texts from a .txt (one per line) or a .csv column.

    The CSV's first row is its header. The column is `column`, else the only one, else the
    first called text, prompt or caption.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with _text_file_errors(path):
            texts = path.read_text(encoding="utf-8-sig").splitlines()
    elif suffix == ".csv":
        rows, columns = _read_csv(path)
        chosen = _text_column(path, columns, column)
        texts = [row.get(chosen) or "" for row in rows]
    else:
        raise ValueError(f"unsupported text file {path.name}: expected .txt (one per line) or .csv")
    texts = [text.strip() for text in texts if text.strip()]
    if not texts:
        raise ValueError(f"{path} holds no non-empty texts")
    return texts


def _text_column(path: Path, columns: list[str], column: str | None) -> str:
    if column is not None:
        if column.strip().lower() in columns:
            return column.strip().lower()
        raise ValueError(f"{path.name} has no column {column!r}; columns: {', '.join(columns)}")
    if len(columns) == 1:
        return columns[0]
    for name in TEXT_COLUMN_NAMES:
        if name in columns:
            return name
    raise ValueError(
        f"{path.name} has columns {', '.join(columns)}; pass column= one of them "
        f"or name it {', '.join(TEXT_COLUMN_NAMES)}"
    )


def prompts_for(labels: Iterable[str], template: str = "a photo of a {label}") -> list[str]:
    """One text prompt per label, `{label}` in `template` replaced by the label."""
    if "{label}" not in template:
        raise ValueError(
            f"template {template!r} must contain {{label}}, e.g. 'a photo of a {{label}}'"
        )
    return [template.replace("{label}", str(label)) for label in labels]
