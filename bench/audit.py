"""The data audit: near-duplicate and mislabel detection on digits with known problems injected (beside cleanlab), and its cost at 130k."""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.report import Section, seconds, table
from bench.timing import median, run_python
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

FULL = {"seeds": 5, "per_class": 30, "timing_rounds": 3}
QUICK = {"seeds": 2, "per_class": 30, "timing_rounds": 1}
FLIPPED_SHARE = 0.05  # train labels flipped to another class
COPIED_SHARE = 0.2  # train images copied into test, each by one of COPIES
PRECISION_TARGET = RECALL_TARGET = 0.95  # near-duplicates at the default cut (issue #25)
COST_TARGET = 0.2  # the audit adds at most this share to the first analysis at 130k
_SIDE = 64  # the digits as write_digits_dataset writes them: 8x8 upscaled to 64x64 grey
CLEANLAB_HOW = "pip install cleanlab"  # bench-only: the app does not need it


def _image(ink: np.ndarray) -> Image.Image:
    """An 8x8 digit (0..16 ink) as the 64x64 grey picture write_digits_dataset saves."""
    grey = (255 - ink.reshape(8, 8) * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey).resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


def _ink(image: Image.Image) -> np.ndarray:
    """A picture back to 8x8 ink levels, as the vectors are made of."""
    small = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), np.float64)
    return ((255 - small) * (16 / 255)).ravel()


def _resized(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(24, 48))
    smaller = image.resize((side, side), Image.Resampling.BILINEAR)
    return smaller.resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


def _reencoded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _cropped(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of one pixel (of 64) off two sides, scaled back."""
    left, top = (int(value) for value in rng.integers(0, 2, 2))
    box = (left, top, _SIDE - 1 + left, _SIDE - 1 + top)
    return image.crop(box).resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


COPIES = {"resized": _resized, "re-encoded (JPEG)": _reencoded, "cropped": _cropped}


@dataclass(frozen=True)
class Injected:
    """Digits vectors with known problems: which train labels were flipped and which test images copy which train image."""

    embeddings: Embeddings
    flipped: set[str]  # train ids whose label was flipped
    copies: dict[str, str]  # test id → the train id it copies
    true_train_labels: dict[str, str]  # train id → its label before any flip


def injected_digits(
    seed: int,
    per_class: int,
    flipped_share: float = FLIPPED_SHARE,
    copied_share: float = COPIED_SHARE,
) -> Injected:
    """scikit-learn's digits as bench/quality.py makes them (0–6 known, 7–9 distractors, centred unit pixels),
    every image through the 64-pixel picture the dataset on disk holds, with `per_class` train images a class,
    `flipped_share` of train labels flipped and `copied_share` of train images copied into test
    (resized, re-encoded or cropped; no share of either injects nothing)."""
    from sklearn.datasets import load_digits

    from core.io.demo import DIGIT_TRAIN_CLASSES

    digits = load_digits()
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [
            rng.choice(np.flatnonzero(digits.target == digit), per_class, replace=False)
            for digit in DIGIT_TRAIN_CLASSES
        ]
    )
    test = np.setdiff1d(np.arange(len(digits.target)), train)
    images = [_image(ink) for ink in digits.data]
    inks = [_ink(image) for image in images]
    labels = [str(t) if t in DIGIT_TRAIN_CLASSES else DISTRACTOR for t in digits.target]
    ids = [f"digit-{row}" for row in range(len(labels))]
    train_ids, test_ids = [ids[row] for row in train], [ids[row] for row in test]
    train_labels = [labels[row] for row in train]
    true_train_labels = dict(zip(train_ids, train_labels))
    flipped = set()
    for position in rng.choice(len(train), round(flipped_share * len(train)), replace=False):
        others = [str(d) for d in DIGIT_TRAIN_CLASSES if str(d) != train_labels[position]]
        train_labels[position] = str(rng.choice(others))
        flipped.add(train_ids[position])
    copies, copy_inks, copy_labels = {}, [], []
    for position in rng.choice(len(train), round(copied_share * len(train)), replace=False):
        row = train[position]
        how = list(COPIES)[len(copies) % len(COPIES)]
        copy_id = f"copy-{len(copies)}-of-{ids[row]}"
        copies[copy_id] = ids[row]
        copy_inks.append(_ink(COPIES[how](images[row], rng)))
        copy_labels.append(labels[row])
    pixels = np.array([inks[row] for row in train] + [inks[row] for row in test] + copy_inks)
    vectors = pixels - pixels.mean(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    all_ids = train_ids + test_ids + list(copies)
    return Injected(
        Embeddings(
            ids=np.array(all_ids),
            splits=np.array([TRAIN] * len(train) + [TEST] * (len(test) + len(copies))),
            labels=np.array(
                train_labels + [labels[row] for row in test] + copy_labels, dtype=object
            ),
            vectors=vectors.astype(np.float32),
            model="centred pixels",
        ),
        flipped,
        copies,
        true_train_labels,
    )
