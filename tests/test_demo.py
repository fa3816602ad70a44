"""Tests for core.io.demo: the synthetic shapes dataset and the scikit-learn digits dataset."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from core.io.demo import (
    COLOURS,
    DISTRACTOR_COLOURS,
    DISTRACTOR_SHAPES,
    TRAIN_COLOURS,
    TRAIN_SHAPES,
    write_demo_dataset,
    write_digits_dataset,
)
from core.io.layouts import load_dataset
from core.io.texts import load_texts, prompts_for
from core.records import DISTRACTOR, TEST, TRAIN


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return load_dataset(write_demo_dataset(tmp_path_factory.mktemp("shapes")))


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return write_digits_dataset(tmp_path_factory.mktemp("digits"))


def test_demo_layout_counts_and_distractor_share(shapes):
    counts = Counter((item.split, item.label) for item in shapes.items)
    train_labels = {label for split, label in counts if split == TRAIN}
    assert len(train_labels) == 12 and all(counts[TRAIN, label] == 3 for label in train_labels)
    assert all(counts[TEST, label] == 8 for label in train_labels)
    assert counts[TEST, DISTRACTOR] == 5 * 8
    test = shapes.split(TEST)
    assert sum(item.label == DISTRACTOR for item in test) / len(test) == pytest.approx(40 / 136)
    assert shapes.has_test_truth and shapes.rejected == []
    assert all(item.path.stat().st_size > 0 for item in shapes.items)


def test_demo_class_names_are_colour_shape_and_distractors_are_unseen(shapes):
    for label in {item.label for item in shapes.split(TRAIN)}:
        colour, shape = label.split(" ")
        assert colour in TRAIN_COLOURS and shape in TRAIN_SHAPES
    assert not set(DISTRACTOR_SHAPES) & set(TRAIN_SHAPES)
    assert not set(DISTRACTOR_COLOURS) & set(TRAIN_COLOURS)
    assert set(COLOURS) == set(TRAIN_COLOURS) | set(DISTRACTOR_COLOURS)


def test_demo_test_names_do_not_reveal_labels(shapes):
    test = shapes.split(TEST)
    assert all(re.fullmatch(r"test_\d{4}\.jpg", item.id) for item in test)
    assert len({item.id for item in shapes.items}) == len(shapes.items)
    # numbers are shuffled: the first eight are not all one class
    first = sorted(test, key=lambda item: item.id)[:8]
    assert len({item.label for item in first}) > 1


def test_demo_texts_are_train_class_prompts(shapes):
    train_labels = sorted({item.label for item in shapes.split(TRAIN)})
    texts = load_texts(shapes.items[0].path.parents[2] / "texts.txt")
    assert sorted(texts) == prompts_for(train_labels)


def test_demo_images_are_rgb_at_the_requested_size(shapes):
    image = Image.open(shapes.items[0].path)
    assert image.mode == "RGB" and image.size == (96, 96)


def test_demo_classes_cluster_in_pixel_space(shapes):
    """A raw-pixel nearest neighbour must do far better than chance, and spot distractors."""

    def features(items):
        rows = np.stack(
            [np.asarray(Image.open(i.path).resize((16, 16)), float).ravel() for i in items]
        )
        rows -= rows.mean(axis=1, keepdims=True)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    train, test = shapes.split(TRAIN), shapes.split(TEST)
    similarity = features(test) @ features(train).T
    known = np.array([item.label != DISTRACTOR for item in test])
    nearest = [train[j].label for j in similarity.argmax(axis=1)]
    accuracy = np.mean([guess == item.label for guess, item, k in zip(nearest, test, known) if k])
    assert accuracy >= 0.3  # chance is 1/12
    best = similarity.max(axis=1)
    assert best[known].mean() > best[~known].mean()


def test_demo_is_deterministic_under_seed(tmp_path):
    small = dict(
        n_classes=3,
        train_per_class=2,
        test_per_class=2,
        n_distractor_classes=1,
        distractor_per_class=2,
        size=32,
    )
    first = file_bytes(write_demo_dataset(tmp_path / "a", seed=5, **small))
    assert first == file_bytes(write_demo_dataset(tmp_path / "b", seed=5, **small))
    assert first != file_bytes(write_demo_dataset(tmp_path / "c", seed=6, **small))


def test_demo_reuses_its_own_folder_and_refuses_to_overwrite_others(tmp_path):
    small = dict(
        n_classes=2,
        train_per_class=1,
        test_per_class=1,
        n_distractor_classes=1,
        distractor_per_class=1,
        size=32,
    )
    root = write_demo_dataset(tmp_path, **small)
    written_at = (root / "texts.txt").stat().st_mtime_ns
    assert write_demo_dataset(tmp_path, **small) == root
    assert (root / "texts.txt").stat().st_mtime_ns == written_at
    with pytest.raises(ValueError, match="already exists and was not written by these arguments"):
        write_demo_dataset(tmp_path, seed=1, **small)
    assert [p.name for p in tmp_path.iterdir()] == ["demo-shapes"]  # no scratch folder left


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(n_classes=37), "n_classes must be an integer from 1 to 36, got 37"),
        (dict(n_distractor_classes=17), "n_distractor_classes must be an integer from 0 to 16"),
        (dict(size=8), "size must be an integer from 16 to 1024, got 8"),
        (dict(train_per_class=0), "train_per_class must be an integer from 1"),
    ],
)
def test_demo_validates_arguments(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path, **arguments)
    assert not (tmp_path / "demo-shapes").exists()


def test_digits_counts_and_distractor_share(digits_root):
    dataset = load_dataset(digits_root)
    targets = load_digits().target
    counts = Counter((item.split, item.label) for item in dataset.items)
    assert {label: n for (split, label), n in counts.items() if split == TRAIN} == {
        str(d): 3 for d in range(7)
    }
    for digit in range(7):
        assert counts[TEST, str(digit)] == np.sum(targets == digit) - 3
    assert counts[TEST, DISTRACTOR] == np.sum(targets >= 7)
    test = dataset.split(TEST)
    share = counts[TEST, DISTRACTOR] / len(test)
    assert 0.25 <= share <= 0.35
    assert len(dataset.items) == len(targets) and dataset.rejected == []
    assert all(re.fullmatch(r"(train|test)_\d{4}\.png", item.id) for item in dataset.items)


def test_digits_images_are_upscaled_grey_with_dark_ink(digits_root):
    image = Image.open(next((digits_root / TRAIN / "0").iterdir()))
    assert image.mode == "L" and image.size == (64, 64)
    grey = np.asarray(image)
    assert grey.max() >= 200 and grey.min() <= 60  # white paper, dark strokes


def test_digits_are_deterministic_under_seed(tmp_path, digits_root):
    again = write_digits_dataset(tmp_path)
    assert file_bytes(again) == file_bytes(digits_root)
