"""The datasets a workspace can open: the built-in ones, uploads stored in the workspace, folders under the data root, Hugging Face datasets."""

from __future__ import annotations

import contextlib
import csv
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from core.io.archives import safe_extract_zip
from core.io.demo import DEMO_FOLDER, DIGITS_FOLDER, write_demo_dataset, write_digits_dataset
from core.io.files import read_csv, replaced_atomically
from core.io.hf_datasets import HUB_PREFIX, HfSelection, is_hf_source, selected_source
from core.io.layouts import load_dataset
from core.io.parquet import is_embeddings_source, read_embeddings_checked
from core.paths import confined_path, data_root, safe_file_name, without_server_paths
from core.progress import Watch
from core.records import Rejected
from core.session.workspace import DatasetEntry, Workspace

UPLOAD_LAYOUTS = (
    "upload one .zip, one .parquet, or a train.csv (columns image,label) together with its images"
)
ACTIVE_DATASET_KEY = "dataset"


class NamedFile(Protocol):
    """An uploaded file: the name the user gave it and its bytes, whole or read a chunk at a time (Streamlit's UploadedFile is one)."""

    name: str

    def getvalue(self) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


# Writers of the built-in datasets by kind: each takes the folder to write under, keeps what is
# already there and returns the dataset's own folder.
BUILTIN_WRITERS = {"demo": write_demo_dataset, "digits": write_digits_dataset}


def builtin_datasets(root: Path) -> list[DatasetEntry]:
    """The demo and digits datasets under `root`, each written (no download) when it is first opened.

    Writing digits takes seconds (scikit-learn and 1,797 images): a first page never waits for it.
    """
    return [
        DatasetEntry("demo: coloured shapes", str(root / DEMO_FOLDER), "demo"),
        DatasetEntry("digits (scikit-learn)", str(root / DIGITS_FOLDER), "digits"),
    ]


def opened(entry: DatasetEntry) -> DatasetEntry:
    """`entry`, with a built-in dataset written first when it is not on disk yet."""
    write = BUILTIN_WRITERS.get(entry.kind)
    if write is not None and str(write(Path(entry.source).parent)) != entry.source:
        raise ValueError(
            f"the built-in {entry.kind} dataset was written somewhere other than {entry.source}"
        )
    return entry


class WorkspaceDatasets:
    """The datasets of one workspace: the built-in ones first, then the ones its user added."""

    def __init__(self, ws: Workspace, builtin: Sequence[DatasetEntry]):
        self.ws = ws
        self.builtin = list(builtin)

    def all(self) -> list[DatasetEntry]:
        return self.builtin + self.ws.datasets()

    def chosen(self) -> DatasetEntry:
        """The dataset chosen last, or the first built-in one when none was chosen or it is gone; not opened yet."""
        known = {entry.name: entry for entry in self.all()}
        return known.get(self.ws.get(ACTIVE_DATASET_KEY), self.builtin[0])

    def active(self) -> DatasetEntry:
        """The chosen dataset, opened: a built-in one is written first when it is not on disk yet."""
        return opened(self.chosen())

    def choose(self, name: str) -> None:
        if name not in {entry.name for entry in self.all()}:
            raise ValueError(f"no dataset is called {name!r} in this workspace")
        self.ws.set(ACTIVE_DATASET_KEY, name)

    def add_folder(self, relative: str) -> DatasetEntry:
        """Register a dataset folder, an embeddings Parquet or a folder of its part files under the data root.

        `..`, absolute paths and links out are refused.
        """
        with _without_server_paths():
            source = confined_path(data_root(), relative)
            if is_embeddings_source(source) and source.exists():
                return self._register(source.name, source, "parquet")
            if not source.is_dir():
                raise ValueError(
                    f"{relative!r} is neither a folder nor an embeddings .parquet (file or folder of part files) "
                    "under the data root"
                )
            return self._register(source.name, source, "folder")

    def add_hugging_face(
        self, location: str, selection: HfSelection, watch: Watch = Watch()
    ) -> DatasetEntry:
        """Register a Hugging Face dataset: a save_to_disk folder under the data root, or hf:owner/name from the Hub.

        Its chosen splits' images are written once (core.io.hf_datasets), reporting to `watch`; the
        workspace keeps the selection in the source, so every page reads the same splits and columns.
        """
        location = location.strip()
        with _without_server_paths():
            if location.startswith(HUB_PREFIX):
                hub_id = location.removeprefix(HUB_PREFIX).partition("?")[0]
                return self._register(
                    hub_id, selected_source(location, selection), "huggingface", watch
                )
            folder = confined_path(data_root(), location)
            if not is_hf_source(folder):
                raise ValueError(
                    f"{location!r} is not a folder written by save_to_disk under the data root; "
                    f"a dataset on the Hub is spelled {HUB_PREFIX}owner/name"
                )
            return self._register(
                folder.name, selected_source(folder, selection), "huggingface", watch
            )

    def add_upload(self, name: str, files: Sequence[NamedFile]) -> DatasetEntry:
        """Store uploaded files in a folder of their own in the workspace and register them as a dataset.

        One .zip or one .parquet stands alone. Otherwise a train.csv (image,label) plus images: the
        images it lists sit beside it, the others become test images. Each file is copied to disk a
        chunk at a time, never held twice in memory. A refused upload leaves nothing behind, and its
        error names the upload, not where the server keeps it.
        """
        files = list(files)
        suffixes = {Path(upload.name).suffix.lower() for upload in files}
        csvs = [upload for upload in files if upload.name.lower().endswith(".csv")]
        standalone = len(files) == 1 and suffixes <= {".zip", ".parquet"}
        if not standalone and (len(csvs) != 1 or safe_file_name(csvs[0].name) != "train.csv"):
            raise ValueError(UPLOAD_LAYOUTS)
        folder = self.ws.new_upload_folder(name)
        try:
            with _without_server_paths({folder: name.strip() or "upload"}):
                source = (
                    self._store_standalone(folder, files[0])
                    if standalone
                    else self._store_csv_layout(folder, csvs[0], files)
                )
                return self._register(
                    name, source, "parquet" if is_embeddings_source(source) else "upload"
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def refused_on_upload(self, entry: DatasetEntry) -> list[Rejected]:
        """Archive entries refused when an upload was unpacked (the dataset itself never saw them)."""
        return [
            Rejected(name, reason) for name, reason in self.ws.get(_refused_key(entry.source), [])
        ]

    def _store_standalone(self, folder: Path, upload: NamedFile) -> Path:
        stored = self._save(folder, upload)
        if stored.suffix.lower() == ".parquet":
            return stored
        extracted = stored.with_suffix("")
        refused = safe_extract_zip(stored, extracted)
        stored.unlink()
        self.ws.set(_refused_key(extracted), [[r.name, r.reason] for r in refused])
        return extracted

    def _store_csv_layout(
        self, folder: Path, train_csv: NamedFile, files: Sequence[NamedFile]
    ) -> Path:
        """train.csv and the images it lists side by side, the rest under test/.

        An image stored under another name than its row gives (a name made safe or shortened) has
        its row rewritten to that name, so the row still finds it.
        """
        stored_csv = self._save(folder, train_csv)
        rows, columns = read_csv(stored_csv)
        listed = {row.get("image", "") for row in rows}
        renamed = {}
        for upload in files:
            if upload is train_csv:
                continue
            stored = self._save(folder if upload.name in listed else folder / "test", upload)
            if upload.name in listed and stored.name != upload.name:
                renamed[upload.name] = stored.name
        if renamed:
            with (
                replaced_atomically(stored_csv) as partial,
                open(partial, "w", newline="", encoding="utf-8") as handle,
            ):
                writer = csv.DictWriter(handle, columns)
                writer.writeheader()
                writer.writerows(
                    {**row, "image": renamed.get(row["image"], row["image"])} for row in rows
                )
        return folder

    def _save(self, folder: Path, upload: NamedFile) -> Path:
        return self.ws.save_upload(str(folder.relative_to(self.ws.files)), upload.name, upload)

    def _register(
        self, name: str, source: Path | str, kind: str, watch: Watch = Watch()
    ) -> DatasetEntry:
        """Check the source reads, then add it under a name no other dataset of the workspace has."""
        if kind == "parquet":
            read_embeddings_checked(source)
        else:
            load_dataset(source, watch=watch)
        return self.ws.add_dataset(
            DatasetEntry(name.strip() or kind, str(source), kind),
            reserved=[entry.name for entry in self.builtin],
        )


@contextlib.contextmanager
def _without_server_paths(named: Mapping[Path, str] | None = None) -> Iterator[None]:
    """A ValueError or OSError raised inside becomes one ValueError naming no server path (`named` folders by their names)."""
    try:
        yield
    except (ValueError, OSError) as error:
        raise ValueError(without_server_paths(error, named)) from None


def _refused_key(source: str | Path) -> str:
    return f"refused:{source}"


def open_action(given: str) -> str:
    """The words of the button that opens a dataset under the data root, named by what was given."""
    return "Open Parquet file" if given.strip().lower().endswith(".parquet") else "Open folder"
