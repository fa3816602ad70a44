"""Hugging Face datasets as a source: a save_to_disk folder or a hub id (hf:owner/name), turned into the project's Dataset."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from PIL import Image

from core.io.archives import UNPACKED_FOLDER
from core.io.files import replaced_atomically
from core.io.images import IMAGE_EXTENSIONS, ImageRejected, load_image
from core.io.labels import checked_label, label_values
from core.paths import HUB_REPO_ID, resolved_inside, safe_file_name, workspace_home
from core.progress import Watch
from core.records import TEST, TRAIN, Candidate, Rejected

# A source spelled hf:owner/name is a dataset on the Hugging Face Hub; a path never starts so.
HUB_PREFIX = "hf:"
# The files save_to_disk writes: a DatasetDict's list of splits, and each Dataset's two.
_DATASET_DICT, _DATASET_INFO, _STATE = "dataset_dict.json", "dataset_info.json", "state.json"
# What marks a save_to_disk folder at its top: a DatasetDict, or a single Dataset.
_SAVED_MARKERS = (_DATASET_DICT, _STATE)
_WRITTEN_PREFIX = "hf-"
# Why an image given as a path is not used: the same words whether the file exists or not, so a
# dataset cannot probe this machine's files.
_PATH_NOT_READ = (
    "the image is a file path, not bytes stored in the dataset, and not a readable file of the "
    "dataset's own (inside its folder, or for a Hub dataset its download): not opened"
)
_REPORT_EVERY = 100  # rows between progress reports while images are written


@dataclass(frozen=True)
class HfSelection:
    """Which splits and columns of a Hugging Face dataset become the train and test images."""

    train_split: str = field(
        default=TRAIN,
        metadata={"help": "Hugging Face dataset split used as train (its rows need a label)"},
    )
    test_split: str = field(
        default=TEST,
        metadata={
            "help": "Hugging Face dataset split used as test (a missing label is unknown truth, -1 a distractor); '' for none"
        },
    )
    image_column: str = field(
        default="image",
        metadata={
            "help": "Hugging Face dataset column holding the images (an Image feature or bytes)"
        },
    )
    label_column: str = field(
        default="label",
        metadata={
            "help": "Hugging Face dataset column holding the class (a ClassLabel id becomes its name)"
        },
    )


def is_hf_source(source: str | Path) -> bool:
    """A hub id spelled hf:owner/name, or a folder written by save_to_disk (either with an optional ?selection)."""
    location, _ = _location_and_query(str(source))
    return location.startswith(HUB_PREFIX) or _is_saved_folder(Path(location))


def selected_source(source: str | Path, selection: HfSelection) -> str:
    """`source` spelled with the fields of `selection` that differ from the defaults, over any it already names.

    A source spelled so keeps its choice wherever it is stored or passed (a workspace, a command's
    argument): 'folder?label_column=fine_label' or 'hf:owner/name?test_split=validation'. Raises
    ValueError when a choice is made for a source that is not a Hugging Face dataset.
    """
    chosen = _changed_fields(selection)
    if not is_hf_source(source):
        if chosen:
            raise ValueError(
                f"the choice of {', '.join(chosen)} is for Hugging Face datasets only (a save_to_disk folder or "
                f"{HUB_PREFIX}owner/name); {source} is neither"
            )
        return str(source)
    location, given = parse_source(str(source))
    merged = replace(given, **chosen)
    query = urlencode(_changed_fields(merged))
    return f"{location}?{query}" if query else location


def parse_source(source: str) -> tuple[str, HfSelection]:
    """The location (a folder or hf:owner/name) and the selection a source spells after '?'."""
    location, query = _location_and_query(source)
    names = {f.name for f in fields(HfSelection)}
    chosen = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(chosen) - names)
    if unknown:
        raise ValueError(
            f"{source}: unknown choice(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return location, HfSelection(**chosen)


def hf_candidates(
    source: str | Path, work_dir: Path | None = None, watch: Watch = Watch()
) -> tuple[str, list[Candidate], list[Rejected]]:
    """The dataset's name, the image files of its chosen splits with their labels, and the rows refused.

    Images are written once per split content (the dataset's fingerprint) and image column, into a
    folder under `work_dir` (by default ``unpacked`` in the workspace home) that the items point into;
    later loads only read the labels. Writing goes row by row, reports to `watch`, and resumes where a
    stopped run left off. Rows whose image cannot be decoded are refused with the reason; the rest
    loads. An image given as a path without its bytes is read only from inside the saved folder, or
    for a Hub dataset from the repository's download in the Hub cache: a dataset can name no other
    file of this machine. Raises ValueError naming what exists when a chosen split or column does
    not, and naming the file when a saved folder's own files point outside it.
    """
    location, selection = parse_source(str(source))
    if location.startswith(HUB_PREFIX):
        hub_id = location.removeprefix(HUB_PREFIX)
        name, splits, images_under = hub_id, _hub_splits(hub_id), _hub_download_folder(hub_id)
    else:
        folder = Path(location).resolve()
        name, splits, images_under = folder.name, _saved_splits(folder), folder
    written_under = Path(work_dir) if work_dir else workspace_home() / UNPACKED_FOLDER
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    for split, split_name, data in _chosen_splits(name, splits, selection):
        _check_columns(name, split_name, data, selection, label_required=split == TRAIN)
        target = written_under / _folder_name(name, split_name, data, selection)
        written, refused = _images_written_once(
            data, split_name, selection.image_column, target, images_under, watch
        )
        rejected += refused
        candidates += _labelled(
            written,
            split,
            split_name,
            _labels(data, name, split_name, selection.label_column),
            rejected,
        )
    return name, candidates, rejected


def _location_and_query(source: str) -> tuple[str, str]:
    try:
        whole = Path(source).exists()  # a folder whose own name holds '?'
    except OSError:  # too long for a file name, as a long selection makes it
        whole = False
    if whole:
        return source, ""
    location, _, query = source.partition("?")
    return location, query


def _is_saved_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).is_file() for marker in _SAVED_MARKERS)


def _changed_fields(selection: HfSelection) -> dict[str, str]:
    default = HfSelection()
    return {
        key: value for key, value in asdict(selection).items() if value != getattr(default, key)
    }


def _saved_splits(folder: Path):
    """The folder's splits by name, or its one Dataset when save_to_disk was given a single one."""
    import datasets

    try:
        _check_saved_files(folder)
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder} is not a readable save_to_disk folder: {error}") from None
    return loaded if isinstance(loaded, datasets.Dataset) else dict(loaded)


def _check_saved_files(folder: Path) -> None:
    """Every file load_from_disk would open for `folder` lies inside it; ValueError naming the first that does not.

    load_from_disk joins the split names of dataset_dict.json and the data file names of each
    state.json to the folder as they are written, so '../' or an absolute path in them would read
    any Arrow file of this machine.
    """
    split_folders = {".": "."}
    if not (folder / _DATASET_INFO).is_file() or not (folder / _STATE).is_file():
        splits = _json_file(folder, _DATASET_DICT).get("splits")
        if not isinstance(splits, list):
            raise ValueError(f"{_DATASET_DICT} lists no splits")
        split_folders = {str(split): f"split {str(split)!r}" for split in splits}
    for split, what in split_folders.items():
        for own_file in (_DATASET_INFO, _STATE):
            _inside_saved_folder(folder, Path(split, own_file), f"the {own_file} of {what}")
        data_files = _json_file(folder, Path(split, _STATE)).get("_data_files")
        if not isinstance(data_files, list):
            raise ValueError(f"the {_STATE} of {what} lists no data files")
        for data_file in data_files:
            name = str(data_file.get("filename") if isinstance(data_file, dict) else data_file)
            _inside_saved_folder(folder, Path(split, name), f"the data file {name!r} of {what}")


def _inside_saved_folder(folder: Path, relative: Path, what: str) -> None:
    """Nothing when `relative`, joined to `folder` as load_from_disk joins it (an absolute part stands for itself), lies inside it."""
    if resolved_inside(folder, relative) is None:
        raise ValueError(f"{what} lies outside the dataset folder: it is not opened")


def _json_file(folder: Path, relative: Path | str) -> dict:
    """A small JSON file of a saved folder, once it is known to lie inside it."""
    _inside_saved_folder(folder, Path(relative), str(relative))
    try:
        loaded = json.loads((folder / relative).read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{relative} cannot be read: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{relative} holds no JSON object")
    return loaded


def _hub_splits(hub_id: str) -> dict:
    import datasets

    if not HUB_REPO_ID.fullmatch(hub_id):
        raise ValueError(
            f"{HUB_PREFIX}{hub_id} is not a Hugging Face dataset id: expected {HUB_PREFIX}owner/name"
        )
    if Path(hub_id).exists():  # load_dataset would read the local path rather than the Hub
        raise ValueError(
            f"{hub_id} is a local path: give a save_to_disk folder without {HUB_PREFIX}"
        )
    try:
        loaded = datasets.load_dataset(hub_id)
    except ConnectionError:
        why = (
            "HF_HUB_OFFLINE is set"
            if datasets.config.HF_HUB_OFFLINE
            else "the Hugging Face Hub cannot be reached"
        )
        raise ValueError(
            f"{HUB_PREFIX}{hub_id} cannot be loaded: {why} and it is not in the local cache; on a machine with "
            f"network run datasets.load_dataset({hub_id!r}).save_to_disk('<folder>') and give that folder"
        ) from None
    except FileNotFoundError as error:
        raise ValueError(f"{HUB_PREFIX}{hub_id}: {error}") from None
    return dict(loaded)


def _hub_download_folder(hub_id: str) -> Path:
    """The repository's own folder in the Hub cache, where load_dataset downloads its files.

    Archives datasets extracts go to a folder every dataset shares, so their files are not among
    what this dataset may name.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=hub_id, repo_type="dataset")


def _chosen_splits(name: str, splits, selection: HfSelection) -> list[tuple[str, str, object]]:
    """(project split, dataset split name, its rows) for train and test; a single saved Dataset is train alone."""
    if not isinstance(splits, dict):
        return [(TRAIN, TRAIN, splits)]
    chosen = [(TRAIN, selection.train_split)] + (
        [(TEST, selection.test_split)] if selection.test_split else []
    )
    for split, split_name in chosen:
        if split_name not in splits:
            raise ValueError(
                f"{name} has no split {split_name!r} (chosen as {split}); its splits: {', '.join(splits)}"
            )
    return [(split, split_name, splits[split_name]) for split, split_name in chosen]


def _check_columns(
    name: str, split_name: str, data, selection: HfSelection, label_required: bool
) -> None:
    import datasets

    columns = list(data.features)
    wanted = [selection.image_column] + ([selection.label_column] if label_required else [])
    missing = [column for column in wanted if column not in columns]
    if missing:
        raise ValueError(
            f"{name} split {split_name} has no column {', '.join(map(repr, missing))}; "
            f"its columns: {', '.join(columns)}"
        )
    feature = data.features[selection.image_column]
    if not isinstance(feature, datasets.Image) and getattr(feature, "dtype", None) not in (
        "binary",
        "large_binary",
    ):
        raise ValueError(
            f"{name} column {selection.image_column!r} holds {feature}, not images; its columns: {', '.join(columns)}"
        )


def _folder_name(name: str, split_name: str, data, selection: HfSelection) -> str:
    """Named by the split's content (its fingerprint) and the image column, so a change writes anew."""
    from datasets.fingerprint import generate_fingerprint

    key = hashlib.sha256(
        f"{generate_fingerprint(data)}\0{selection.image_column}".encode()
    ).hexdigest()[:16]
    return f"{_WRITTEN_PREFIX}{safe_file_name(f'{name}-{split_name}')}-{key}"


def _images_written_once(
    data, split_name: str, column: str, folder: Path, images_under: Path, watch: Watch
) -> tuple[dict[int, Path], list[Rejected]]:
    """The image file of each usable row, by row number, and the rows refused; written on first use only.

    A folder is complete once its record of refusals stands beside it; a folder without one was left
    by a stopped run, and the rows it already holds are kept rather than written again.
    """
    record = folder.with_name(f"{folder.name}.refused.json")
    if record.is_file():
        try:
            return _written_files(folder), [
                Rejected(**entry) for entry in json.loads(record.read_text("utf-8"))
            ]
        except (OSError, ValueError, TypeError):
            pass  # an unreadable record: check every row again
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    written = _written_files(folder)
    if isinstance(data.features[column], datasets.Image):
        # the encoded bytes, never decoded pixels
        data = data.cast_column(column, datasets.Image(decode=False))
    rows = data.select_columns([column])
    rejected: list[Rejected] = []
    stage = f"writing the images of split {split_name}"
    total = len(rows)
    for row, value in enumerate(rows):
        if row % _REPORT_EVERY == 0:
            watch.step(row, total, stage)
        if row in written:
            continue
        where = f"{split_name} row {row}"
        try:
            encoded = _encoded_image(value[column], images_under)
            suffix = _checked_suffix(encoded, where)
        except ImageRejected as refusal:
            rejected.append(Rejected(where, refusal.reason))
            continue
        path = folder / f"{safe_file_name(split_name)}-{row:06d}{suffix}"
        with replaced_atomically(path) as partial:
            partial.write_bytes(encoded)
        written[row] = path
    watch.step(total, total, stage)
    with replaced_atomically(record) as partial:
        partial.write_text(json.dumps([asdict(entry) for entry in rejected]), "utf-8")
    return written, rejected


def _written_files(folder: Path) -> dict[int, Path]:
    """The files a run wrote into `folder`, by row number (hidden partial files are not among them)."""
    return {
        int(path.stem.rsplit("-", 1)[1]): path
        for path in folder.iterdir()
        if not path.name.startswith(".")
    }


def _encoded_image(value, images_under: Path) -> bytes:
    """The encoded bytes of a cell of an Image feature (bytes and/or path) or of a binary column.

    A path without bytes is read only when it lies inside `images_under` (a relative one is taken
    from there); any other is refused with the same words whether or not it exists.
    """
    if isinstance(value, (bytes, bytearray)) or value is None:
        encoded, path = value, None
    else:
        encoded, path = value.get("bytes"), value.get("path")
    if encoded:
        return bytes(encoded)
    if not path:
        raise ImageRejected("no image in this row")
    inside = resolved_inside(images_under, str(path))
    try:
        if inside is None:
            raise OSError
        return inside.read_bytes()
    except OSError:
        raise ImageRejected(_PATH_NOT_READ) from None


def _checked_suffix(encoded: bytes, where: str) -> str:
    """The file suffix of the image format in `encoded`; ImageRejected with the reason when it does not decode."""
    load_image(encoded, where)  # the project's decoder decides what is usable, and says why not
    with Image.open(io.BytesIO(encoded)) as image:
        image_format = image.format
    return _FORMAT_SUFFIXES.get(image_format, f".{str(image_format).lower()}")


def _format_suffixes() -> dict[str, str]:
    """Pillow's format names and the suffix each is written with: an accepted one, the shortest first."""
    by_format: dict[str, list[str]] = {}
    for suffix, image_format in Image.registered_extensions().items():
        by_format.setdefault(image_format, []).append(suffix)
    return {
        image_format: min(suffixes, key=lambda s: (s not in IMAGE_EXTENSIONS, len(s), s))
        for image_format, suffixes in by_format.items()
    }


_FORMAT_SUFFIXES = _format_suffixes()


def _labels(data, name: str, split_name: str, column: str) -> tuple[list[object], list[str] | None]:
    """The label column's values, and the class names when it is a ClassLabel (its values are then ids)."""
    import datasets

    if column not in data.features:
        return [None] * len(data), None  # a split without labels: unknown truth
    feature = data.features[column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    values = label_values(data.with_format("arrow")[column], column, f"{name} split {split_name}")
    return values, names


def _class_name(value: object, names: list[str] | None) -> tuple[object, str]:
    """A ClassLabel id as its name (-1, Hugging Face's missing label, as None) and why an id has none; other values as they are."""
    if names is None or value is None:
        return value, ""
    if value < 0:
        return None, ""
    if value >= len(names):
        return None, f"class id {value} is not one of the {len(names)} ClassLabel names"
    return names[value], ""


def _labelled(
    written: dict[int, Path],
    split: str,
    split_name: str,
    labels: tuple[list[object], list[str] | None],
    rejected: list[Rejected],
) -> list[Candidate]:
    values, names = labels
    candidates = []
    for row, path in sorted(written.items()):
        raw_label, problem = _class_name(values[row], names)
        if not problem:
            label, problem = checked_label(raw_label, split)
        if not problem and split == TRAIN and raw_label is None:
            problem = "train row without a label"
        if problem:
            rejected.append(Rejected(f"{split_name} row {row}", problem))
        else:
            candidates.append(Candidate(split, label, path, path.name, raw_label))
    return candidates
