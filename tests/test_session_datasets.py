"""core.session.datasets: built-in datasets, uploads stored in their own folders, folders under the data root."""

import io
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench.fixtures import retrieval_embeddings
from core.embedding.config import EmbedConfig
from core.io.demo import write_demo_dataset
from core.io.layouts import load_dataset
from core.io.parquet import write_embeddings
from core.session.datasets import UPLOAD_LAYOUTS, WorkspaceDatasets, builtin_datasets
from core.session.vectors import DatasetVectors
from core.session.workspace import DatasetEntry, Workspace


class Upload(io.BytesIO):
    """What Streamlit hands over for an uploaded file: a name and its bytes."""

    def __init__(self, name: str, data: bytes):
        super().__init__(data)
        self.name = name


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
