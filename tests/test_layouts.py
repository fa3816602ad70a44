"""Tests for core.io.layouts: folder and CSV dataset layouts, ids, refusals row by row."""

from __future__ import annotations

import re

import pytest
from input_files import BLUE, RED, SVG, encode, jpeg, write_files
from PIL import Image

from core.__main__ import main
from core.io import layouts
from core.io.layouts import load_dataset
from core.records import DISTRACTOR, TEST, TRAIN


def test_folder_layout_with_flat_test_has_no_test_truth(tmp_path, small_layout):
    dataset = load_dataset(write_files(tmp_path / "pets", small_layout))
    assert dataset.name == "pets"
    assert [(i.split, i.label, i.id) for i in dataset.items] == [
        (TRAIN, "cat", "c1.jpg"),
        (TRAIN, "cat", "c2.jpg"),
        (TRAIN, "dog", "d1.jpg"),
        (TEST, None, "t1.jpg"),
        (TEST, None, "t2.jpg"),
    ]
    assert not dataset.has_test_truth and dataset.rejected == []
    assert all(item.path.is_absolute() and item.path.is_file() for item in dataset.items)


def test_labelled_test_folders_give_test_truth_with_distractors(tmp_path):
    root = write_files(
        tmp_path / "d",
        {
            "train/ cat /c.jpg": jpeg(),
            "test/cat/t1.jpg": jpeg(),
            f"test/{DISTRACTOR}/t2.jpg": jpeg(),
        },
    )
    dataset = load_dataset(root)
    assert dataset.has_test_truth
    assert {i.id: i.label for i in dataset.items} == {
        "c.jpg": "cat",
        "t1.jpg": "cat",
        "t2.jpg": DISTRACTOR,
    }


def test_mixed_test_folder_has_no_test_truth(tmp_path):
    root = write_files(
        tmp_path / "d",
        {"train/cat/c.jpg": jpeg(), "test/cat/t1.jpg": jpeg(), "test/t2.jpg": jpeg()},
    )
    assert not load_dataset(root).has_test_truth


def test_duplicate_file_names_get_unique_deterministic_ids(tmp_path):
    root = write_files(
        tmp_path / "d",
        {
            "train/dog/a.jpg": jpeg(),
            "train/cat/a.jpg": jpeg(),
            "test/a.jpg": jpeg(),
            "test/b.jpg": jpeg(),
        },
    )
    ids = [item.id for item in load_dataset(root).items]
    assert ids == ["a.jpg", "train/dog/a.jpg", "test/a.jpg", "b.jpg"]
    assert ids == [item.id for item in load_dataset(root).items]


def test_unicode_and_space_names(tmp_path):
    root = write_files(
        tmp_path / "jeu de données",
        {
            "train/pão de queijo/фото 1.jpg": jpeg(),
            "test/テスト 画像.png": encode(Image.new("RGB", (4, 4))),
        },
    )
    dataset = load_dataset(root)
    assert dataset.name == "jeu de données"
    assert [(i.id, i.label) for i in dataset.items] == [
        ("фото 1.jpg", "pão de queijo"),
        ("テスト 画像.png", None),
    ]


def test_os_junk_is_ignored_and_other_files_are_rejected(tmp_path, small_layout):
    root = write_files(
        tmp_path / "d",
        {
            **small_layout,
            "train/cat/.DS_Store": b"junk",
            "train/cat/Thumbs.db": b"junk",
            "train/.hidden/x.jpg": jpeg(),
            "__MACOSX/train/cat/._c1.jpg": b"junk",
            "train/cat/notes.txt": b"hello",
            "train/stray.jpg": jpeg(),
            f"train/{DISTRACTOR}/odd.jpg": jpeg(),
            "test/drawing.svg": SVG,
            "README.md": b"not part of any split",
        },
    )
    dataset = load_dataset(root)
    assert len(dataset.items) == len(small_layout)
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert set(reasons) == {
        "train/cat/notes.txt",
        "train/stray.jpg",
        f"train/{DISTRACTOR}/odd.jpg",
        "test/drawing.svg",
    }
    assert reasons["train/cat/notes.txt"].startswith(
        "not an image file type (.txt); accepted: .bmp"
    )
    assert "outside a label folder" in reasons["train/stray.jpg"]
    assert "cannot be a train class" in reasons[f"train/{DISTRACTOR}/odd.jpg"]


def test_empty_train_split_is_a_clear_error(tmp_path):
    root = write_files(tmp_path / "d", {"train/cat/bad.jpg": b"", "test/t.jpg": jpeg()})
    with pytest.raises(
        ValueError,
        match=r"train split of .* is empty.*1 rejected, e.g. train/cat/bad.jpg: empty file",
    ):
        load_dataset(root)


def test_unknown_layout_and_missing_source_are_clear_errors(tmp_path):
    root = write_files(tmp_path / "d", {"images/a.jpg": jpeg()})
    with pytest.raises(ValueError, match=r"no dataset layout .* found images"):
        load_dataset(root)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_csv_layout_with_test_csv_and_extra_columns(tmp_path):
    root = write_files(
        tmp_path / "kaggle",
        {
            "images/a.jpg": jpeg(),
            "images/b.jpg": jpeg(),
            "images/t1.jpg": jpeg(),
            "images/t2.jpg": jpeg(),
            "train.csv": b"image,label,notes\nimages/a.jpg, cat ,x\nb.jpg,dog,found in images/\n"
            b"images/missing.jpg,cat,\n../outside.jpg,cat,\n\n",
            "test.csv": b"Image,Label\nimages/t1.jpg,cat\nimages/t2.jpg,-1\n",
        },
    )
    dataset = load_dataset(root)
    assert [(i.split, i.id, i.label) for i in dataset.items] == [
        (TRAIN, "a.jpg", "cat"),
        (TRAIN, "b.jpg", "dog"),
        (TEST, "t1.jpg", "cat"),
        (TEST, "t2.jpg", DISTRACTOR),
    ]
    assert dataset.has_test_truth
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert reasons == {
        "images/missing.jpg": "train.csv row 4: no such file",
        "../outside.jpg": "train.csv row 5: path points outside the dataset folder",
    }
    assert load_dataset(root / "train.csv").items == dataset.items


def test_csv_without_test_csv_uses_the_test_folder(tmp_path):
    root = write_files(
        tmp_path / "d",
        {
            "images/a.jpg": jpeg(),
            "test/t.jpg": jpeg(),
            "train.csv": b"image,label\nimages/a.jpg,cat\n",
        },
    )
    assert [(i.split, i.id) for i in load_dataset(root).items] == [
        (TRAIN, "a.jpg"),
        (TEST, "t.jpg"),
    ]


def test_csv_empty_labels_are_rejected_rows(tmp_path):
    root = write_files(
        tmp_path / "d",
        {
            "images/a.jpg": jpeg(),
            "images/b.jpg": jpeg(),
            "train.csv": b"image,label\nimages/a.jpg,cat\nimages/b.jpg,   \n,cat\n",
        },
    )
    dataset = load_dataset(root)
    assert [i.id for i in dataset.items] == ["a.jpg"]
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        ("images/b.jpg", "empty label in train.csv row 3"),
        ("train.csv row 4", "empty image path"),
    ]


def test_csv_missing_columns_names_found_and_required(tmp_path):
    root = write_files(
        tmp_path / "d", {"images/a.jpg": jpeg(), "train.csv": b"image,path\nimages/a.jpg,x\n"}
    )
    expected = r"train.csv lacks column\(s\) label: found image, path; required: image, label"
    with pytest.raises(ValueError, match=expected):
        load_dataset(root)
    (root / "train.csv").write_text("image,label\nimages/a.jpg,cat\n")
    (root / "test.csv").write_text("file\nimages/a.jpg\n")
    with pytest.raises(
        ValueError,
        match=r"test.csv lacks column\(s\) image: found file; required: image; optional: label",
    ):
        load_dataset(root)


def test_float_and_padded_labels_are_spelled_once_in_folders_and_csvs(tmp_path):
    folders = write_files(
        tmp_path / "folders",
        {
            "train/3.0/a.jpg": jpeg(),
            "train/ cat /b.jpg": jpeg(),
            "test/-1.0/t.jpg": jpeg(),
            "test/3/u.jpg": jpeg(),
        },
    )
    with pytest.warns(UserWarning, match="white space tidied in 1 label"):
        dataset = load_dataset(folders)
    assert {i.id: i.label for i in dataset.items} == {
        "a.jpg": "3",
        "b.jpg": "cat",
        "t.jpg": DISTRACTOR,
        "u.jpg": "3",
    }
    csvs = write_files(
        tmp_path / "csvs",
        {
            "a.jpg": jpeg(),
            "b.jpg": jpeg(),
            "t.jpg": jpeg(),
            "u.jpg": jpeg(),
            "train.csv": b"image,label\na.jpg,3.0\nb.jpg,cat\n",
            "test.csv": b"image,label\nt.jpg,-1.0\nu.jpg,3\n",
        },
    )
    assert {i.id: i.label for i in load_dataset(csvs).items} == {
        i.id: i.label for i in dataset.items
    }


@pytest.mark.parametrize("label", ["   ", " -1", "-1.0"], ids=["blank", "padded -1", "float -1"])
def test_blank_and_distractor_train_folders_are_refused_by_name(tmp_path, small_layout, label):
    root = write_files(tmp_path / "d", {**small_layout, f"train/{label}/x.jpg": jpeg()})
    dataset = load_dataset(root)
    assert len(dataset.items) == len(small_layout)
    assert [r.name for r in dataset.rejected] == [f"train/{label}/x.jpg"]
    assert dataset.rejected[0].reason in (
        "empty label",
        "label -1 marks test distractors and cannot be a train class",
    )


@pytest.mark.parametrize("link", ["train/cat/secret.jpg", "train/bird", "test/out.jpg"])
def test_a_link_out_of_the_dataset_folder_is_refused_by_name_and_never_opened(
    tmp_path, small_layout, link
):
    outside = write_files(tmp_path / "outside", {"secret.jpg": jpeg(), "dog/d9.jpg": jpeg()})
    root = write_files(tmp_path / "d", small_layout)
    target = outside / "dog" if link == "train/bird" else outside / "secret.jpg"
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(target)
    opened = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layouts, "check_image_file", lambda path: opened.append(path))
        dataset = load_dataset(root)
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        (link, "link to a file or folder outside the dataset folder: not opened")
    ]
    assert all(path.resolve().is_relative_to(root) for path in opened) and len(opened) == len(
        dataset.items
    )


def test_a_csv_row_naming_a_link_out_of_the_dataset_folder_is_refused(tmp_path):
    outside = write_files(tmp_path / "outside", {"secret.jpg": jpeg()})
    root = write_files(
        tmp_path / "d", {"a.jpg": jpeg(), "train.csv": b"image,label\na.jpg,cat\nlink.jpg,cat\n"}
    )
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "inside.jpg").symlink_to(root / "a.jpg")
    (root / "train.csv").write_text("image,label\na.jpg,cat\nlink.jpg,cat\ninside.jpg,dog\n")
    dataset = load_dataset(root)
    assert [(i.id, i.label) for i in dataset.items] == [("a.jpg", "cat"), ("inside.jpg", "dog")]
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        ("link.jpg", "train.csv row 3: links to a file outside the dataset folder: not opened")
    ]


def _unlabelled_folder(root):
    return write_files(
        root / "pets",
        {
            "train/cat/c.jpg": jpeg(RED),
            "train/dog/d.jpg": jpeg(BLUE),
            "test/cat/t1.jpg": jpeg(RED),
            "test/t2.jpg": jpeg(BLUE),
        },
    )


def _unlabelled_csv(root):
    folder = write_files(
        root / "csv",
        {"c.jpg": jpeg(RED), "d.jpg": jpeg(BLUE), "t1.jpg": jpeg(RED), "t2.jpg": jpeg(BLUE)},
    )
    (folder / "train.csv").write_text("image,label\nc.jpg,cat\nd.jpg,dog\n")
    (folder / "test.csv").write_text("image\nt1.jpg\nt2.jpg\n")  # a blank label is refused
    return folder


def _unlabelled_parquet(root):
    from input_files import make_embeddings

    from core.io.parquet import write_embeddings

    path = root / "vectors.parquet"
    write_embeddings(path, make_embeddings(4))  # its last test row has no label
    return path


def _unlabelled_hugging_face(root):
    """Hugging Face's "no label": a ClassLabel of -1 on one test row."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    images = [{"bytes": jpeg(colour), "path": None} for colour in (RED, BLUE)]
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"image": images, "label": [0, 1]}, features=features),
        test=datasets.Dataset.from_dict({"image": images, "label": [0, -1]}, features=features),
    ).save_to_disk(root / "hf")
    return root / "hf"


@pytest.mark.parametrize(
    "make, missing, how",
    [
        (_unlabelled_folder, 1, r"put the test images under test/<label>/"),
        (_unlabelled_csv, 2, r"give every row of test\.csv a label"),
        (_unlabelled_parquet, 1, r"give every test row a label in the Parquet file's label column"),
        (
            _unlabelled_hugging_face,
            1,
            r"give every row of the test split 'test' a class in its column 'label' .*"
            r"a ClassLabel's -1 is Hugging Face's \"no label\"",
        ),
    ],
    ids=["folder", "csv", "parquet", "hugging face"],
)
def test_evaluate_without_test_truth_says_how_to_give_it_for_the_source_the_user_gave(
    tmp_path, workspace, capsys, make, missing, how
):
    source = make(tmp_path)
    assert main(["evaluate", str(source), "--model", "baseline"]) == 2
    error = capsys.readouterr().err
    assert re.search(rf"needs test truth: {missing} of 2 test items have no label: {how}", error), (
        error
    )
    if make is not _unlabelled_folder:
        assert "test/<label>/" not in error
