"""Datasets from user layouts: train/<label>/ folders, train.csv and test.csv, a zip of either, or a Hugging Face dataset."""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from core.io.archives import UNPACKED_FOLDER, unpacked_once
from core.io.files import is_os_junk, read_csv, refusal_examples

# hf_datasets imports the heavy `datasets` only when a Hugging Face source is read.
from core.io.hf_datasets import hf_candidates, is_hf_source, parse_source
from core.io.images import IMAGE_EXTENSIONS, check_image_file
from core.io.labels import checked_label, white_space_note
from core.io.parquet import is_embeddings_source
from core.paths import workspace_home
from core.progress import Watch
from core.records import SPLITS, TEST, TRAIN, Candidate, Dataset, Item, Rejected


def load_dataset(
    source: str | Path, work_dir: Path | None = None, watch: Watch = Watch()
) -> Dataset:
    """Read a dataset from a folder, a train.csv, a .zip of either, or a Hugging Face dataset.

    Folder layout: train/<label>/<images>, and test/<images> or test/<label>/<images> ("-1" for
    distractors); Hugging Face's imagefolder is this layout. CSV layout: train.csv (image,label) with
    paths relative to the CSV, plus an optional test.csv (image[,label]); without test.csv the test/
    folder is used. A zip is extracted safely, once per distinct content, into a folder under
    `work_dir` (by default ``unpacked`` in the workspace home), which is kept because the items point
    into it. A Hugging Face dataset (a save_to_disk folder or hf:owner/name, see core.io.hf_datasets)
    has its images written there the same way, reporting to `watch`. Each file gets a header check
    only; refused files land in Dataset.rejected and the rest loads. Raises ValueError when no train
    image is usable.
    """
    if is_hf_source(source):
        name, candidates, rejected = hf_candidates(source, work_dir, watch)
        return _dataset(name, source, candidates, rejected, "in its train split")
    source = Path(source).resolve()
    if not source.exists():
        raise ValueError(f"dataset source {source} does not exist")
    rejected: list[Rejected] = []
    if source.is_file() and source.suffix.lower() == ".zip":
        name = source.stem
        extracted, refused = unpacked_once(
            source, Path(work_dir) if work_dir else workspace_home() / UNPACKED_FOLDER
        )
        rejected += refused
        root = _layout_root(extracted.resolve(), source)
        train_csv = root / "train.csv"
    elif source.is_file() and source.suffix.lower() == ".csv":
        name, root, train_csv = source.parent.name, source.parent, source
    elif source.is_dir():
        name = source.name
        root = _layout_root(source, source)
        train_csv = root / "train.csv"
    else:
        raise ValueError(
            f"unsupported dataset source {source}: expected a folder, a .zip, a train.csv or a Hugging Face dataset"
        )
    if train_csv.is_file():
        candidates = _csv_candidates(train_csv, root, rejected)
    else:
        candidates = _folder_candidates(root, rejected)
    return _dataset(name, source, candidates, rejected, "under train/<label>/ or in train.csv")


def missing_test_truth(source: str | Path, test_labels: Sequence[object]) -> str:
    """How many test items of `source` lack a label, and how to give them one in the terms of its kind.

    A folder takes test/<label>/ folders, a CSV layout test.csv's label column, an embeddings
    Parquet its label column, and a Hugging Face dataset the label column of its test split.
    """
    missing = sum(label is None for label in test_labels)
    counted = f"{missing} of {len(test_labels)} test items have no label"
    if is_hf_source(source):
        _, selection = parse_source(str(source))
        return (
            f"{counted}: give every row of the test split {selection.test_split!r} a class in its "
            f'column {selection.label_column!r} ("-1" for distractors; a ClassLabel\'s -1 is Hugging '
            'Face\'s "no label", unknown truth), or choose a labelled split as the test split'
        )
    path = Path(source)
    if is_embeddings_source(path):
        return f"{counted}: give every test row a label in the Parquet file's label column (-1 for distractors)"
    if "test.csv" in _layout_files(path):
        return f"{counted}: give every row of test.csv a label (image,label; -1 for distractors)"
    if "train.csv" in _layout_files(path):
        return (
            f"{counted}: put the test images under test/<label>/ (-1 for distractors), or list them "
            "in a test.csv with image,label beside train.csv"
        )
    return f"{counted}: put the test images under test/<label>/ (-1 for distractors)"


def _layout_files(source: Path) -> set[str]:
    """The names of the files beside a dataset's train/ folder or train.csv, for a folder, a CSV or a zip."""
    if source.suffix.lower() == ".csv":
        return {path.name for path in source.parent.iterdir()}
    if source.suffix.lower() == ".zip":
        with zipfile.ZipFile(source) as archive:
            return {PurePosixPath(name).name for name in archive.namelist()}
    try:
        return {path.name for path in _layout_root(source, source).iterdir()}
    except (OSError, ValueError):
        return set()


def _dataset(
    name: str, source: str | Path, candidates: list[Candidate], rejected: list[Rejected], where: str
) -> Dataset:
    """The checked candidates as a Dataset, saying which labels lost white space; train must not be empty."""
    note = white_space_note(name, (candidate.raw_label for candidate in candidates))
    if note:
        warnings.warn(note, stacklevel=3)
    items = _accept(candidates, rejected)
    if not any(item.split == TRAIN for item in items):
        raise ValueError(
            f"the train split of {source} is empty: no usable images {where}"
            f"{refusal_examples(rejected, ' (', ')')}"
        )
    return Dataset(name=name, items=items, rejected=rejected)


def _layout_root(folder: Path, source: Path) -> Path:
    """The folder holding train/ or train.csv: `folder` itself or its only subfolder."""
    if _has_layout(folder):
        return folder
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not is_os_junk((p.name,))]
    if len(subfolders) == 1 and _has_layout(subfolders[0]):
        return subfolders[0]
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise ValueError(
        f"no dataset layout in {source}: expected train/<label>/ folders or a train.csv "
        f"(optionally inside one top-level folder); found {found}"
    )


def _has_layout(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "train.csv").is_file()


def _folder_candidates(root: Path, rejected: list[Rejected]) -> list[Candidate]:
    return _folder_split_candidates(root, TRAIN, rejected) + _folder_split_candidates(
        root, TEST, rejected
    )


def _folder_split_candidates(root: Path, split: str, rejected: list[Rejected]) -> list[Candidate]:
    """Files under <split>/, labelled by the folder below it; train files must have one."""
    candidates = []
    for path in _files_under(root / split, root, rejected):
        relative = path.relative_to(root)
        raw_label = relative.parts[1] if len(relative.parts) >= 3 else None
        label, problem = checked_label(raw_label, split)
        if split == TRAIN and raw_label is None:
            problem = "train image outside a label folder: put it in train/<label>/"
        if problem:
            rejected.append(Rejected(relative.as_posix(), problem))
        else:
            candidates.append(Candidate(split, label, path, relative.as_posix(), raw_label))
    return candidates


def _files_under(folder: Path, root: Path, rejected: list[Rejected]) -> list[Path]:
    """The files under `folder`; a link resolving outside `root` is refused by name, never opened."""
    if not folder.is_dir():
        return []
    files = []
    for path in sorted([folder, *folder.rglob("*")]):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            reason = "link to a file or folder outside the dataset folder: not opened"
            rejected.append(Rejected(path.relative_to(root).as_posix(), reason))
        elif path.is_file():
            files.append(path)
    return files


def _csv_candidates(train_csv: Path, root: Path, rejected: list[Rejected]) -> list[Candidate]:
    candidates = _csv_rows(train_csv, TRAIN, root, rejected, label_required=True)
    test_csv = train_csv.with_name("test.csv")
    if test_csv.is_file():
        return candidates + _csv_rows(test_csv, TEST, root, rejected, label_required=False)
    return candidates + _folder_split_candidates(root, TEST, rejected)


def _csv_rows(
    csv_path: Path, split: str, root: Path, rejected: list[Rejected], label_required: bool
) -> list[Candidate]:
    required, optional = (("image", "label"), ()) if label_required else (("image",), ("label",))
    rows, columns = read_csv(csv_path, required, optional)
    candidates = []
    for row_number, row in enumerate(rows, start=2):
        image = row["image"].strip()
        where = f"{csv_path.name} row {row_number}"
        raw_label = row["label"] if "label" in columns else None
        label, problem = checked_label(raw_label, split)
        if not image:
            rejected.append(Rejected(where, "empty image path"))
        elif problem:
            rejected.append(Rejected(image, f"{problem} in {where}"))
        else:
            path, problem = _listed_file(csv_path.parent, image, root)
            if path is None:
                rejected.append(Rejected(image, f"{where}: {problem}"))
            else:
                candidates.append(
                    Candidate(split, label, path, path.relative_to(root).as_posix(), raw_label)
                )
    return candidates


def _listed_file(base: Path, image: str, root: Path) -> tuple[Path | None, str]:
    """The file a CSV cell names, relative to the CSV or, Kaggle style, inside images/."""
    for folder in (base, base / "images"):
        # normpath first, so '..' tricks are refused as such; then resolve, so a user's links may
        # point anywhere inside the dataset folder but never outside it.
        path = Path(os.path.normpath(folder / image))
        if not path.is_relative_to(root):
            return None, "path points outside the dataset folder"
        if path.exists() and not path.resolve().is_relative_to(root):
            return None, "links to a file outside the dataset folder: not opened"
        if path.is_file():
            return path, ""
    return None, "no such file"


def _accept(candidates: list[Candidate], rejected: list[Rejected]) -> list[Item]:
    """Check each candidate cheaply and give the accepted ones unique ids, in a stable order."""
    items: list[Item] = []
    used_ids: set[str] = set()
    seen: set[tuple[str, Path]] = set()
    for candidate in sorted(candidates, key=lambda c: (SPLITS.index(c.split), c.name)):
        if is_os_junk(PurePosixPath(candidate.name).parts):
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


def _candidate_problem(candidate: Candidate, seen: set[tuple[str, Path]]) -> str | None:
    suffix = candidate.path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        return f"not an image file type ({suffix or 'no extension'}); accepted: {accepted}"
    if (candidate.split, candidate.path) in seen:
        return f"listed more than once in {candidate.split}: only the first is used"
    return check_image_file(candidate.path)


def _unique_id(candidate: Candidate, used_ids: set[str]) -> str:
    """The file name, as Kaggle submissions expect; a clash falls back to the relative path."""
    if candidate.path.name not in used_ids:
        return candidate.path.name
    item_id, copy = candidate.name, 2
    while item_id in used_ids:
        item_id, copy = f"{candidate.name}#{copy}", copy + 1
    return item_id
