"""core.session.datasets: built-in datasets, uploads stored in their own folders, folders under the data root."""

import io
import zipfile
from pathlib import Path

import pytest

from core.io.demo import write_demo_dataset
from core.io.layouts import load_dataset
from core.session.datasets import UPLOAD_LAYOUTS, WorkspaceDatasets, builtin_datasets
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
    return files + [Upload("query.jpg", test_image.read_bytes())]


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


@pytest.mark.parametrize("names", [["a.jpg", "b.jpg"], ["labels.csv", "a.jpg"], ["train.csv", "test.csv", "a.jpg"]])
def test_uploads_without_a_known_layout_are_refused_before_anything_is_stored(datasets, names):
    with pytest.raises(ValueError, match="upload one .zip"):
        datasets.add_upload("bad", [Upload(name, b"x") for name in names])
    assert not any(datasets.ws.files.iterdir())
    assert UPLOAD_LAYOUTS.startswith("upload one .zip")


def test_an_unreadable_upload_leaves_no_folder_and_no_dataset(datasets):
    with pytest.raises(ValueError, match="train split .* is empty"):
        datasets.add_upload("empty", [Upload("train.csv", b"image,label\nmissing.jpg,cat\n")])
    assert not any(datasets.ws.files.iterdir()) and datasets.ws.datasets() == []


def test_folders_open_only_under_the_data_root(datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(tmp_path / "root"))
    write_demo_dataset(tmp_path / "root")
    entry = datasets.add_folder("demo-shapes")
    assert entry == DatasetEntry("demo-shapes", str((tmp_path / "root" / "demo-shapes").resolve()), "folder")
    with pytest.raises(ValueError, match="outside the data root"):
        datasets.add_folder("../..")
    with pytest.raises(ValueError, match="is not a folder under the data root"):
        datasets.add_folder("missing")


def test_a_builtin_dataset_is_written_only_when_it_is_first_opened(workspace, tmp_path):
    demo, digits = builtin_datasets(tmp_path / "builtin")
    datasets = WorkspaceDatasets(Workspace("lazy1"), [demo, digits])
    assert [entry.name for entry in datasets.all()] == [demo.name, digits.name]
    assert not (tmp_path / "builtin").exists()
    assert load_dataset(datasets.active().source).items  # the demo, written on opening
    assert not Path(digits.source).exists()
    datasets.choose(digits.name)
    assert datasets.active() == digits and len(load_dataset(digits.source).items) > 1000
