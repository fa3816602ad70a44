"""Tests for core.io.hf_datasets: save_to_disk folders and hub ids as dataset sources, built with `datasets` itself."""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import pytest
from input_files import Upload
from PIL import Image

from core.__main__ import main
from core.io import hf_datasets
from core.io.hf_datasets import HfSelection, selected_source
from core.io.layouts import load_dataset
from core.progress import Cancelled, Watch
from core.records import DISTRACTOR, TEST, TRAIN

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    DISTRACTOR: (230, 230, 40),
}
CLASSES = ("red", "green", "blue")
TRAIN_PER_CLASS, TEST_PER_CLASS, TEST_DISTRACTORS = 3, 2, 3
CORRUPT = b"\x89PNG\r\n\x1a\n but no image follows"


def png(colour, rng, size=16) -> bytes:
    pixels = np.asarray(colour, dtype=float) + rng.normal(0.0, 12.0, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def image_split(labels, rng, image_column="image", label_column="label", corrupt_rows=()) -> dict:
    images = [
        {
            "bytes": CORRUPT
            if row in corrupt_rows
            else png(COLOURS.get(label, (128, 128, 128)), rng),
            "path": None,
        }
        for row, label in enumerate(labels)
    ]
    return {image_column: images, label_column: list(labels)}


def hand_made_folder(folder: Path) -> Path:
    """The files save_to_disk writes for one Dataset, naming no data file: for tests that give load_from_disk a table."""
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text(json.dumps({"_data_files": []}))
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict saved with save_to_disk: ClassLabel names, a '-1' class of distractors, one corrupt test row."""
    rng = np.random.default_rng(0)
    names = [*CLASSES, DISTRACTOR]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    train = [label for label in CLASSES for _ in range(TRAIN_PER_CLASS)]
    test = (
        [label for label in CLASSES for _ in range(TEST_PER_CLASS)]
        + [DISTRACTOR] * TEST_DISTRACTORS
        + ["red"]
    )
    as_ids = lambda split: {**split, "label": [names.index(label) for label in split["label"]]}  # noqa: E731
    folder = tmp_path_factory.mktemp("hf") / "colours"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(as_ids(image_split(train, rng)), features=features),
        test=datasets.Dataset.from_dict(
            as_ids(image_split(test, rng, corrupt_rows={len(test) - 1})), features=features
        ),
    ).save_to_disk(folder)
    return folder


def test_a_saved_dataset_dict_gives_its_splits_with_class_names_and_refuses_the_corrupt_row(
    saved, workspace
):
    dataset = load_dataset(saved)
    assert dataset.name == "colours"
    train, test = dataset.split(TRAIN), dataset.split(TEST)
    assert [item.label for item in train] == [
        label for label in CLASSES for _ in range(TRAIN_PER_CLASS)
    ]
    assert [item.label for item in test] == [
        label for label in CLASSES for _ in range(TEST_PER_CLASS)
    ] + [DISTRACTOR] * TEST_DISTRACTORS
    assert dataset.has_test_truth
    assert train[0].id == "train-000000.png" and train[0].path.read_bytes().startswith(b"\x89PNG")
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        ("test row 9", "not an image (the contents are not a raster format Pillow can read)")
    ]
    assert all(item.path.is_relative_to(workspace) for item in dataset.items)


def test_string_labels_keep_minus_one_as_the_distractor_and_a_missing_one_as_unknown(
    tmp_path, workspace
):
    rng = np.random.default_rng(1)
    folder = tmp_path / "strings"
    train = image_split(["red", "red", None, DISTRACTOR], rng)
    test = image_split(["red", DISTRACTOR, None], rng)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(train, features=features),
        test=datasets.Dataset.from_dict(test, features=features),
    ).save_to_disk(folder)
    dataset = load_dataset(folder)
    assert [(item.split, item.label) for item in dataset.items] == [
        (TRAIN, "red"),
        (TRAIN, "red"),
        (TEST, "red"),
        (TEST, DISTRACTOR),
        (TEST, None),
    ]
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert (
        reasons["train row 2"] == "train row without a label"
        and "cannot be a train class" in reasons["train row 3"]
    )


def test_a_class_label_of_minus_one_is_huggingfaces_missing_label(tmp_path, workspace):
    rng = np.random.default_rng(2)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red"])}
    )
    folder = tmp_path / "hidden-test-labels"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"image": image_split(["red"], rng)["image"], "label": [0]}, features=features
        ),
        test=datasets.Dataset.from_dict(
            {"image": image_split(["red", "red"], rng)["image"], "label": [-1, 0]},
            features=features,
        ),
    ).save_to_disk(folder)
    assert [item.label for item in load_dataset(folder).split(TEST)] == [None, "red"]


def test_a_class_id_outside_the_names_is_refused_row_by_row(tmp_path, monkeypatch, workspace):
    """datasets refuses such ids when it writes a table; a hand-made table can still hold one."""
    rng = np.random.default_rng(7)
    table = datasets.Dataset.from_dict(
        {"image": image_split(["red", "red"], rng)["image"], "label": [0, 5]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    hand_made = datasets.Dataset(
        table.data,
        info=datasets.DatasetInfo(
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red"])}
            )
        ),
    )
    folder = hand_made_folder(tmp_path / "hand-made")
    monkeypatch.setattr(datasets, "load_from_disk", lambda path: hand_made)
    dataset = load_dataset(folder)
    assert [item.label for item in dataset.items] == ["red"]
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        ("train row 1", "class id 5 is not one of the 1 ClassLabel names")
    ]


def test_a_single_saved_dataset_is_the_train_set(tmp_path, workspace):
    folder = tmp_path / "one"
    rng = np.random.default_rng(3)
    datasets.Dataset.from_dict(
        image_split(["red", "blue"], rng),
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    ).save_to_disk(folder)
    dataset = load_dataset(folder)
    assert [(item.split, item.label) for item in dataset.items] == [(TRAIN, "red"), (TRAIN, "blue")]


@pytest.mark.parametrize(
    "choice, message",
    [
        ({"image_column": "picture"}, r"has no column 'picture'; its columns: image, label"),
        ({"label_column": "fine_label"}, r"has no column 'fine_label'; its columns: image, label"),
        (
            {"image_column": "label"},
            r"column 'label' holds ClassLabel.*not images; its columns: image, label",
        ),
        (
            {"test_split": "validation"},
            r"has no split 'validation' \(chosen as test\); its splits: train, test",
        ),
        (
            {"train_split": "training"},
            r"has no split 'training' \(chosen as train\); its splits: train, test",
        ),
    ],
)
def test_a_missing_column_or_split_is_refused_naming_the_ones_that_exist(
    saved, workspace, choice, message
):
    with pytest.raises(ValueError, match=message):
        load_dataset(selected_source(saved, HfSelection(**choice)))


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """Splits named training and validation, columns img and fine (integer labels, -1 a distractor)."""
    rng = np.random.default_rng(4)
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.Value("int64")})
    folder = tmp_path_factory.mktemp("hf") / "custom"
    datasets.DatasetDict(
        training=datasets.Dataset.from_dict(
            {"img": image_split(["red", "red", "blue"], rng)["image"], "fine": [3, 3, 4]},
            features=features,
        ),
        validation=datasets.Dataset.from_dict(
            {"img": image_split(["red", DISTRACTOR], rng)["image"], "fine": [3, -1]},
            features=features,
        ),
    ).save_to_disk(folder)
    return folder


CUSTOM = HfSelection(
    train_split="training", test_split="validation", image_column="img", label_column="fine"
)


def test_chosen_splits_and_columns_are_used_and_no_test_split_is_allowed(custom, workspace):
    source = selected_source(custom, CUSTOM)
    assert (
        source
        == f"{custom}?train_split=training&test_split=validation&image_column=img&label_column=fine"
    )
    dataset = load_dataset(source)
    assert [(item.id, item.label) for item in dataset.items] == [
        ("training-000000.png", "3"),
        ("training-000001.png", "3"),
        ("training-000002.png", "4"),
        ("validation-000000.png", "3"),
        ("validation-000001.png", DISTRACTOR),
    ]
    assert load_dataset(selected_source(source, HfSelection(test_split=""))).split(TEST) == []


def test_a_choice_for_a_source_that_is_not_a_huggingface_dataset_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"the choice of label_column is for Hugging Face datasets only"
    ):
        selected_source(tmp_path, HfSelection(label_column="fine"))
    assert selected_source(tmp_path, HfSelection()) == str(tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown choice\(s\) colour; known: image_column, label_column"
    ):
        load_dataset("hf:owner/name?colour=red")


def test_a_hub_id_offline_is_one_clear_error_without_touching_the_network(monkeypatch, workspace):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def no_network(*args):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(
        ValueError,
        match=r"^hf:someone/cats cannot be loaded: HF_HUB_OFFLINE is set .*\.save_to_disk\('<folder>'\) and give that folder$",
    ):
        load_dataset("hf:someone/cats")


@pytest.mark.parametrize("hub_id", ["../etc", "a/b/c", "/abs", ""])
def test_a_hub_id_that_is_no_repository_name_is_refused_before_loading(
    hub_id, workspace, monkeypatch
):
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("load_dataset was called")
    )
    with pytest.raises(ValueError, match="is not a Hugging Face dataset id"):
        load_dataset(f"hf:{hub_id}")


def hub_download(tmp_path: Path, monkeypatch, hub_id: str) -> Path:
    """A Hub cache of the test's own, and the folder hf_hub_download fills with `hub_id`'s files in it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder = cache / f"datasets--{hub_id.replace('/', '--')}" / "snapshots" / "0123abcd"
    folder.mkdir(parents=True)
    return folder


def path_cells(paths) -> list[dict]:
    """Image cells holding a path and no bytes, as load_dataset leaves downloaded files."""
    return [{"bytes": None, "path": str(path)} for path in paths]


def test_a_hub_dataset_loads_through_load_dataset_with_its_images_as_cached_files(
    tmp_path, monkeypatch, workspace
):
    """As load_dataset gives an imagefolder-style Hub dataset: image paths into its cache, no bytes."""
    rng = np.random.default_rng(5)
    downloads = hub_download(tmp_path, monkeypatch, "someone/colours")
    paths = []
    for row, label in enumerate(["red", "blue", "red"]):
        paths.append(downloads / f"{row}.png")
        paths[-1].write_bytes(png(COLOURS[label], rng))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])}
    )
    hub = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"image": path_cells(paths[:2]), "label": [0, 1]}, features=features
        ),
        test=datasets.Dataset.from_dict(
            {"image": path_cells(paths[2:]), "label": [0]}, features=features
        ),
    )
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: asked.append(hub_id) or hub)
    dataset = load_dataset("hf:someone/colours")
    assert asked == ["someone/colours"] and dataset.name == "someone/colours"
    assert [(item.split, item.label) for item in dataset.items] == [
        (TRAIN, "red"),
        (TRAIN, "blue"),
        (TEST, "red"),
    ]
    assert dataset.items[0].path.read_bytes() == paths[0].read_bytes()


def test_a_hub_image_given_as_a_path_is_read_only_from_the_repositorys_own_download(
    tmp_path, monkeypatch, workspace
):
    """A Hub dataset's path could name any file of the server: existing or not, one reason, and nothing is read."""
    rng = np.random.default_rng(8)
    downloads = hub_download(tmp_path, monkeypatch, "someone/colours")
    (downloads / "red.png").write_bytes(png(COLOURS["red"], rng))
    other_repository = downloads.parents[2] / "datasets--someone--private"
    other_repository.mkdir()
    secrets = [other_repository / "secret.png", tmp_path / "secret.png"]
    for secret in secrets:
        secret.write_bytes(png((1, 2, 3), rng))
    cells = path_cells(
        [downloads / "red.png", *secrets, tmp_path / "no-such-file.png", "../../secret.png"]
    )
    hub = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"image": cells, "label": ["red"] * len(cells)},
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.Value("string")}
            ),
        )
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: hub)
    dataset = load_dataset(selected_source("hf:someone/colours", HfSelection(test_split="")))
    assert [item.id for item in dataset.items] == ["train-000000.png"]
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert set(reasons) == {f"train row {row}" for row in (1, 2, 3, 4)}
    assert len(set(reasons.values())) == 1, "an existing file and a missing one get one reason"
    assert "not opened" in reasons["train row 1"] and str(tmp_path) not in reasons["train row 1"]
    written = [path.read_bytes() for path in workspace.rglob("*.png")]
    assert secrets[0].read_bytes() not in written


def test_an_image_given_as_a_path_in_a_saved_folder_is_read_only_from_inside_it(
    tmp_path, monkeypatch, workspace
):
    """A saved dataset's path is read when it lies in its folder; outside, existing or not, it is refused alike."""
    rng = np.random.default_rng(6)
    folder = hand_made_folder(tmp_path / "hand-made")
    (folder / "images").mkdir()
    (folder / "images" / "red.png").write_bytes(png(COLOURS["red"], rng))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3), rng))
    (folder / "images" / "link.png").symlink_to(secret)
    cells = path_cells(
        [
            "images/red.png",
            folder / "images" / "red.png",
            secret,
            "../secret.png",
            "images/link.png",
            tmp_path / "missing.png",
        ]
    )
    table = datasets.Dataset.from_dict(
        {"image": cells, "label": ["red"] * len(cells)},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    monkeypatch.setattr(datasets, "load_from_disk", lambda path: table)
    dataset = load_dataset(folder)
    assert [item.id for item in dataset.items] == ["train-000000.png", "train-000001.png"]
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert set(reasons) == {f"train row {row}" for row in (2, 3, 4, 5)}
    assert len(set(reasons.values())) == 1, "an existing file and a missing one get one reason"
    assert secret.read_bytes() not in [path.read_bytes() for path in workspace.rglob("*.png")]


def saved_with(folder: Path, source: Path, edit) -> Path:
    """A copy of the saved folder `source` whose JSON files `edit(relative path, content)` changed."""
    import shutil

    shutil.copytree(source, folder)
    for path in folder.rglob("*.json"):
        relative = path.relative_to(folder).as_posix()
        path.write_text(json.dumps(edit(relative, json.loads(path.read_text()))))
    return folder


def data_files_named(name: str):
    """An edit for saved_with: the train split's state.json names `name` as its one data file."""

    def edit(relative, content):
        if relative == "train/state.json":
            content["_data_files"] = [{"filename": name}]
        return content

    return edit


def train_split_named(split: str):
    """An edit for saved_with: dataset_dict.json names `split` in place of train."""

    def edit(relative, content):
        if relative == "dataset_dict.json":
            content["splits"] = [split, "test"]
        return content

    return edit


@pytest.fixture(scope="module")
def secret_dataset(tmp_path_factory) -> Path:
    """A saved dataset outside every dataset folder given, with a class nobody asked for."""
    folder = tmp_path_factory.mktemp("elsewhere") / "secret"
    datasets.Dataset.from_dict(
        image_split(["secret-class"] * 2, np.random.default_rng(9)),
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    ).save_to_disk(folder)
    return folder


@pytest.mark.parametrize(
    "hostile, named",
    [
        (
            lambda secret: data_files_named(str(next(secret.glob("*.arrow")))),
            r"the data file '/.*\.arrow' of split 'train'",
        ),
        (
            lambda secret: data_files_named("../../x.arrow"),
            r"the data file '\.\./\.\./x\.arrow' of split 'train'",
        ),
        (lambda secret: train_split_named(str(secret)), r"of split '/.*/secret'"),
        (lambda secret: train_split_named("../../secret"), r"of split '\.\./\.\./secret'"),
    ],
    ids=[
        "absolute data file",
        "data file up two folders",
        "absolute split",
        "split up two folders",
    ],
)
def test_a_saved_folder_naming_files_outside_itself_is_refused_by_name_before_loading(
    saved, secret_dataset, tmp_path, workspace, monkeypatch, hostile, named
):
    import shutil

    # What the relative names reach: the secret's own files beside the hostile folder.
    shutil.copytree(secret_dataset, tmp_path / "a" / "secret")
    shutil.copy(next(secret_dataset.glob("*.arrow")), tmp_path / "a" / "x.arrow")
    folder = saved_with(tmp_path / "a" / "hostile", saved, hostile(secret_dataset))
    loads = []
    load_from_disk = datasets.load_from_disk
    monkeypatch.setattr(
        datasets, "load_from_disk", lambda path: loads.append(path) or load_from_disk(path)
    )
    with pytest.raises(ValueError, match=f"{named} lies outside the dataset folder"):
        load_dataset(folder)
    assert loads == []


def test_an_uploaded_save_to_disk_zip_cannot_read_a_data_file_of_the_server(
    saved, secret_dataset, tmp_path, workspace
):
    """As the tester found: an upload whose state.json names /any/path/x.arrow showed that file's classes."""
    from core.session.datasets import WorkspaceDatasets
    from core.session.workspace import Workspace

    secret_arrow = next(secret_dataset.glob("*.arrow"))
    folder = saved_with(tmp_path / "hostile", saved, data_files_named(str(secret_arrow)))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    workspace_datasets = WorkspaceDatasets(Workspace("hostile1"), [])
    with pytest.raises(ValueError, match="of split 'train' lies outside the dataset folder"):
        workspace_datasets.add_upload("colours", [Upload("colours.zip", zipped.getvalue())])
    assert workspace_datasets.all() == []


def test_a_120_character_dataset_and_split_name_are_written_under_bounded_names(
    tmp_path, workspace
):
    split = "s" * 120
    folder = tmp_path / ("d" * 120)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = image_split(["red", "blue"], np.random.default_rng(10))
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        folder
    )
    dataset = load_dataset(selected_source(folder, HfSelection(train_split=split, test_split="")))
    assert [item.label for item in dataset.items] == ["red", "blue"]
    assert all(len(path.name.encode()) < 200 for path in workspace.rglob("*"))


def test_a_second_load_reuses_the_written_files(saved, workspace, monkeypatch):
    first = load_dataset(saved)
    written = {item.path: item.path.stat().st_mtime_ns for item in first.items}
    monkeypatch.setattr(
        hf_datasets, "load_image", lambda *args: pytest.fail("an image was decoded again")
    )
    second = load_dataset(saved)
    assert second.items == first.items and second.rejected == first.rejected
    assert {path: path.stat().st_mtime_ns for path in written} == written


def test_a_stopped_run_keeps_the_images_it_wrote_and_the_next_writes_only_the_rest(
    saved, workspace, monkeypatch
):
    monkeypatch.setattr(hf_datasets, "_REPORT_EVERY", 1)
    stop = threading.Event()

    def report(done, total, stage):
        if done == 4:
            stop.set()

    with pytest.raises(Cancelled):
        load_dataset(saved, watch=Watch(report, stop))
    kept = {
        path: path.stat().st_mtime_ns
        for path in next(workspace.rglob("hf-colours-train-*")).iterdir()
    }
    assert len(kept) == 5  # the stop asked for once 4 rows were done is seen at the next row's step
    reports = []
    dataset = load_dataset(
        saved, watch=Watch(lambda done, total, stage: reports.append((done, total, stage)))
    )
    assert len(dataset.split(TRAIN)) == len(CLASSES) * TRAIN_PER_CLASS
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert (9, 9, "writing the images of split train") in reports and (
        10,
        10,
        "writing the images of split test",
    ) in reports


def test_an_imagefolder_is_read_by_the_folder_layout_with_the_labels_huggingface_gives(
    tmp_path, workspace, image_file
):
    for relative in (
        "train/red/a.png",
        "train/red/b.png",
        "train/blue/c.png",
        "test/red/d.png",
        f"test/{DISTRACTOR}/e.png",
    ):
        image_file(f"folder/{relative}")
    ours = {
        (item.split, item.path.name): item.label for item in load_dataset(tmp_path / "folder").items
    }
    theirs = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "folder"), cache_dir=str(tmp_path / "cache")
    )
    names = theirs[TRAIN].features["label"].names
    paths = theirs.cast_column("image", datasets.Image(decode=False))
    assert ours == {
        (split, Path(row["image"]["path"]).name): names[row["label"]]
        for split in (TRAIN, TEST)
        for row in paths[split]
    }


def test_evaluate_runs_on_a_saved_folder_and_its_options_choose_columns(saved, workspace, capsys):
    assert main(["evaluate", str(saved), "--model", "baseline", "--json"]) == 0
    captured = capsys.readouterr()
    # three well-separated colours and a fourth for distractors
    assert json.loads(captured.out)["MAP@5"] >= 0.8
    assert "rejected test row 9: not an image" in captured.err
    assert (
        main(["evaluate", str(saved), "--model", "baseline", "--label-column", "fine_label"]) == 2
    )
    assert "has no column 'fine_label'; its columns: image, label" in capsys.readouterr().err


def test_embed_takes_the_split_options_and_other_sources_refuse_them(
    saved, tmp_path, workspace, capsys
):
    import pyarrow.parquet as pq

    out = tmp_path / "train-only.parquet"
    assert (
        main(["embed", str(saved), "--model", "baseline", "--test-split", "", "--out", str(out)])
        == 0
    )
    assert set(pq.read_table(out).column("split").to_pylist()) == {TRAIN}
    assert main(["evaluate", str(tmp_path), "--model", "baseline", "--image-column", "img"]) == 2
    assert "the choice of image_column is for Hugging Face datasets only" in capsys.readouterr().err


def test_the_data_page_adds_a_saved_folder_with_chosen_columns_and_says_why_a_hub_id_fails(
    custom, tmp_path, workspace, monkeypatch
):
    import shutil

    import streamlit as st
    from test_pages import assert_ran, displayed, metrics, run_page

    root = tmp_path / "data-root"
    shutil.copytree(custom, root / "custom")
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    st.cache_data.clear()
    app = run_page("data", "hugging1")
    app.text_input(key="hf_location").set_value("hf:someone/cats").run()
    next(
        button for button in app.button if button.label == "Add Hugging Face dataset"
    ).click().run()
    assert "HF_HUB_OFFLINE is set" in displayed(app.error[0].value)
    app.text_input(key="hf_location").set_value("custom")
    for name, value in asdict(CUSTOM).items():
        app.text_input(key=f"hf_{name}").set_value(value)
    next(
        button for button in app.run().button if button.label == "Add Hugging Face dataset"
    ).click().run()
    assert_ran(app)
    assert app.selectbox[0].value == "custom"
    values = metrics(app)
    assert (values["Train images"], values["Train classes"], values["Test images"]) == (
        "3",
        "2",
        "2",
    )
    # the other pages read the same choice from the workspace
    embedded = run_page("embed", "hugging1")
    assert_ran(embedded)
    assert metrics(embedded)["Vectors"] == "5"


def test_the_workspace_adds_only_saved_folders_under_the_data_root(
    saved, tmp_path, workspace, monkeypatch
):
    import shutil

    from core.session.datasets import WorkspaceDatasets
    from core.session.workspace import Workspace

    root = tmp_path / "data-root"
    (root / "plain").mkdir(parents=True)
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    datasets_of_workspace = WorkspaceDatasets(Workspace("hugging2"), [])
    with pytest.raises(
        ValueError, match="'plain' is not a folder written by save_to_disk under the data root"
    ):
        datasets_of_workspace.add_hugging_face("plain", HfSelection())
    with pytest.raises(ValueError, match="outside the data root"):
        datasets_of_workspace.add_hugging_face(str(saved), HfSelection())
    assert datasets_of_workspace.all() == []
    shutil.copytree(saved, root / "colours")
    # the Folder tab opens one too, with the default choice
    entry = datasets_of_workspace.add_folder("colours")
    assert len(load_dataset(entry.source).items) == 18
