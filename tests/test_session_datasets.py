"""core.session.datasets: built-in datasets, uploads stored in their own folders, folders under the data root."""

import io
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from input_files import Upload

from bench.fixtures import retrieval_embeddings
from core.embedding.config import EmbedConfig
from core.io.demo import write_demo_dataset
from core.io.layouts import load_dataset
from core.io.parquet import write_embeddings
from core.session.datasets import UPLOAD_LAYOUTS, WorkspaceDatasets, builtin_datasets
from core.session.vectors import DatasetVectors
from core.session.workspace import DatasetEntry, Workspace


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    return builtin_datasets(tmp_path_factory.mktemp("builtin"))


@pytest.fixture
def datasets(workspace, builtin):
    return WorkspaceDatasets(Workspace("datasets1"), builtin)


def csv_upload(root, classes: list[str]) -> list[Upload]:
    """A train.csv naming one image per class, those images, and one image it does not list (a test image)."""
    images = sorted((root / "train").rglob("*.jpg"))
    by_class = {path.parent.name: path for path in images}
    rows = [f"{by_class[label].name},{label}" for label in classes]
    files = [Upload("train.csv", ("image,label\n" + "\n".join(rows) + "\n").encode())]
    files += [Upload(by_class[label].name, by_class[label].read_bytes()) for label in classes]
    test_image = next(iter(sorted((root / "test").rglob("*.jpg"))))
    return [*files, Upload("query.jpg", test_image.read_bytes())]


def test_the_first_builtin_dataset_is_active_until_another_is_chosen(datasets, builtin):
    assert datasets.active() == builtin[0]
    datasets.choose(builtin[1].name)
    assert datasets.active() == builtin[1]
    with pytest.raises(ValueError, match="no dataset is called 'nope'"):
        datasets.choose("nope")


def test_two_uploads_with_one_name_at_once_keep_their_own_classes(datasets, tmp_path):
    root = write_demo_dataset(tmp_path)
    classes = sorted(path.name for path in (root / "train").iterdir())
    alpha = datasets.add_upload("upload", csv_upload(root, classes[:2]))
    beta = datasets.add_upload("upload", csv_upload(root, classes[2:5]))
    assert alpha.source != beta.source and (alpha.name, beta.name) == ("upload", "upload (2)")
    for entry, expected in ((alpha, classes[:2]), (beta, classes[2:5])):
        dataset = load_dataset(entry.source)
        assert sorted({item.label for item in dataset.split("train")}) == expected
        assert len(dataset.split("test")) == 1
    assert [entry.name for entry in datasets.all()][-2:] == ["upload", "upload (2)"]


UPLOADERS, ROUNDS = 4, 3  # sessions uploading one name at once, and how often it is tried


def test_uploads_of_one_name_at_the_same_moment_each_keep_their_entry_and_folder(
    workspace, builtin, tmp_path
):
    """Each session opens the workspace itself, as each browser tab does; no upload may replace another."""
    root = write_demo_dataset(tmp_path)
    classes = sorted(path.name for path in (root / "train").iterdir())
    for round_ in range(ROUNDS):
        workspace_id = f"race{round_}"
        at_once = threading.Barrier(UPLOADERS)

        def upload(index, workspace_id=workspace_id, at_once=at_once):
            files = csv_upload(root, classes[2 * index : 2 * index + 2])
            datasets = WorkspaceDatasets(Workspace(workspace_id), builtin)
            at_once.wait()
            return datasets.add_upload("mydata", files)

        with ThreadPoolExecutor(UPLOADERS) as pool:
            added = list(pool.map(upload, range(UPLOADERS)))
        kept = Workspace(workspace_id).datasets()
        assert sorted(entry.name for entry in kept) == sorted(
            ["mydata", *(f"mydata ({copy})" for copy in range(2, UPLOADERS + 1))]
        )
        assert sorted(kept, key=lambda entry: entry.name) == sorted(
            added, key=lambda entry: entry.name
        )
        assert {Path(entry.source) for entry in kept} == set(
            Workspace(workspace_id).files.iterdir()
        )
        for entry in kept:  # each name leads to the classes its own upload holds
            index = next(i for i, other in enumerate(added) if other.source == entry.source)
            labels = {item.label for item in load_dataset(entry.source).split("train")}
            assert labels == set(classes[2 * index : 2 * index + 2])


def test_an_upload_named_as_a_builtin_dataset_gets_a_name_of_its_own(datasets, builtin, tmp_path):
    root = write_demo_dataset(tmp_path)
    classes = sorted(path.name for path in (root / "train").iterdir())
    entry = datasets.add_upload(builtin[0].name, csv_upload(root, classes[:2]))
    assert entry.name == f"{builtin[0].name} (2)"


def test_an_upload_with_a_120_character_name_and_long_file_names_is_stored_and_read(
    datasets, tmp_path
):
    """Every name that becomes a folder or file is bounded; a train.csv row follows its image's stored name."""
    root = write_demo_dataset(tmp_path)
    classes = sorted(path.name for path in (root / "train").iterdir())[:2]
    files = csv_upload(root, classes)
    long_names = {upload.name: f"{'画像' * 70}-{upload.name}" for upload in files[1:3]}
    rows = "".join(
        f"{long_names[upload.name]},{label}\n" for upload, label in zip(files[1:3], classes)
    )
    renamed = [Upload("train.csv", f"image,label\n{rows}".encode())]
    renamed += [Upload(long_names[upload.name], upload.getvalue()) for upload in files[1:3]]
    name = "数据集" * 40
    entry = datasets.add_upload(name, [*renamed, files[3]])
    assert entry.name == name
    dataset = load_dataset(entry.source)
    assert sorted(item.label for item in dataset.split("train")) == classes
    assert len(dataset.split("test")) == 1 and not dataset.rejected


def test_a_zip_upload_is_unpacked_and_its_refused_entries_kept(datasets, tmp_path):
    root = write_demo_dataset(tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*.jpg")):
            archive.write(path, str(path.relative_to(root)))
        archive.writestr("../escape.jpg", b"outside")
    entry = datasets.add_upload("zipped", [Upload("shapes.zip", buffer.getvalue())])
    assert entry.kind == "upload" and not entry.source.endswith(".zip")
    assert [rejected.name for rejected in datasets.refused_on_upload(entry)] == ["../escape.jpg"]


@pytest.mark.parametrize(
    "names", [["a.jpg", "b.jpg"], ["labels.csv", "a.jpg"], ["train.csv", "test.csv", "a.jpg"]]
)
def test_uploads_without_a_known_layout_are_refused_before_anything_is_stored(datasets, names):
    with pytest.raises(ValueError, match=r"upload one .zip"):
        datasets.add_upload("bad", [Upload(name, b"x") for name in names])
    assert not any(datasets.ws.files.iterdir())
    assert UPLOAD_LAYOUTS.startswith("upload one .zip")


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "upload, says",
    [
        (Upload("data.zip", b"not a zip"), "data.zip is not a readable zip archive"),
        (Upload("data.zip", zipped({"notes/readme.txt": b"hi"})), "no dataset layout in"),
        (Upload("train.csv", b"image,label\nmissing.jpg,cat\n"), "missing.jpg"),
        (Upload("vectors.parquet", b"PAR1 but no Parquet"), "vectors.parquet is not a readable"),
        (
            Upload("saved.zip", zipped({"dataset_dict.json": b"{", "train/state.json": b"{}"})),
            "dataset_dict.json cannot be read",
        ),
    ],
    ids=[
        "not a zip",
        "zip without a layout",
        "csv naming no file",
        "bad parquet",
        "bad saved folder",
    ],
)
def test_a_refused_upload_names_the_users_files_never_a_server_path(
    datasets, workspace, upload, says
):
    with pytest.raises(ValueError, match=says) as refusal:
        datasets.add_upload("my upload", [upload])
    message = str(refusal.value)
    assert str(workspace) not in message and "workspaces" not in message, message
    assert not any(part.startswith("/") for part in message.split()), message


class WholeReadRefused(Upload):
    """An upload that fails the test when it is read whole: getvalue, or read without a size."""

    def getvalue(self):
        raise AssertionError("the upload was read whole")

    def read(self, size=-1, /):
        assert size is not None and size >= 0, "the upload was read whole"
        return super().read(size)


def test_an_upload_is_copied_to_disk_a_chunk_at_a_time(datasets, tmp_path):
    root = write_demo_dataset(tmp_path)
    zip_bytes = zipped(
        {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.jpg"))}
    )
    entry = datasets.add_upload("chunked", [WholeReadRefused("shapes.zip", zip_bytes)])
    assert len(load_dataset(entry.source).split("train")) > 0


def test_an_unreadable_upload_leaves_no_folder_and_no_dataset(datasets):
    with pytest.raises(ValueError, match=r"train split .* is empty"):
        datasets.add_upload("empty", [Upload("train.csv", b"image,label\nmissing.jpg,cat\n")])
    assert not any(datasets.ws.files.iterdir()) and datasets.ws.datasets() == []


def test_folders_open_only_under_the_data_root(datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(tmp_path / "root"))
    write_demo_dataset(tmp_path / "root")
    entry = datasets.add_folder("demo-shapes")
    assert entry == DatasetEntry(
        "demo-shapes", str((tmp_path / "root" / "demo-shapes").resolve()), "folder"
    )
    with pytest.raises(ValueError, match="outside the data root"):
        datasets.add_folder("../..")
    with pytest.raises(ValueError, match=r"is neither a folder nor an embeddings .parquet"):
        datasets.add_folder("missing")


def test_the_folder_tab_opens_an_embeddings_parquet_file_or_folder_of_part_files(
    datasets, tmp_path, monkeypatch
):
    root = tmp_path / "root"
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    (root / "parts").mkdir(parents=True)
    write_embeddings(root / "vectors.parquet", retrieval_embeddings(40, n_classes=10))
    table = pq.read_table(root / "vectors.parquet")
    pq.write_table(table.slice(0, 30), root / "parts" / "part-0.parquet")
    pq.write_table(table.slice(30), root / "parts" / "part-1.parquet")
    (root / "parts" / "_SUCCESS").write_text("")  # what Spark leaves beside its parts
    single, parts = datasets.add_folder("vectors.parquet"), datasets.add_folder("parts")
    assert (single.kind, parts.kind) == ("parquet", "parquet")
    vectors = DatasetVectors(models=None, cache=None)
    assert (
        len(vectors.of(parts, EmbedConfig()).embeddings.ids)
        == len(vectors.of(single, EmbedConfig()).embeddings.ids)
        == 70
    )
    with pytest.raises(ValueError, match=r"is neither a folder nor an embeddings .parquet"):
        datasets.add_folder("missing.parquet")


def test_an_added_parquet_is_read_once_for_its_analysis(datasets, tmp_path, monkeypatch):
    path = tmp_path / "vectors.parquet"
    write_embeddings(path, retrieval_embeddings(40, n_classes=10))
    reads = []
    read_table = pq.read_table
    monkeypatch.setattr(
        pq, "read_table", lambda *args, **kwargs: reads.append(args) or read_table(*args, **kwargs)
    )
    entry = datasets.add_upload("vectors", [Upload("vectors.parquet", path.read_bytes())])
    loaded = DatasetVectors(models=None, cache=None).of(entry, EmbedConfig())
    assert len(loaded.embeddings.ids) == 70 and len(reads) == 1


def test_a_builtin_dataset_is_written_only_when_it_is_first_opened(workspace, tmp_path):
    demo, digits = builtin_datasets(tmp_path / "builtin")
    datasets = WorkspaceDatasets(Workspace("lazy1"), [demo, digits])
    assert [entry.name for entry in datasets.all()] == [demo.name, digits.name]
    assert not (tmp_path / "builtin").exists()
    assert load_dataset(datasets.active().source).items  # the demo, written on opening
    assert not Path(digits.source).exists()
    datasets.choose(digits.name)
    assert datasets.active() == digits and len(load_dataset(digits.source).items) > 1000
