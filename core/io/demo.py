"""Built-in datasets made locally, no download: synthetic coloured shapes, scikit-learn's digits."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.io.texts import prompts_for
from core.records import DISTRACTOR, TEST, TRAIN

DEMO_FOLDER = "demo-shapes"  # what write_demo_dataset makes under its out_dir
DIGITS_FOLDER = "digits"  # what write_digits_dataset makes under its out_dir

# Train classes combine these shapes and colours; distractor classes use only the others, so
# a distractor shares neither its shape nor its colour with any train class.
TRAIN_SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
DISTRACTOR_SHAPES = ("star", "hexagon", "crescent", "heart")
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (130, 40, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "green": (30, 160, 50),
    "pink": (245, 110, 190),
    "cyan": (20, 200, 220),
    "brown": (120, 70, 30),
}
TRAIN_COLOURS = ("red", "blue", "yellow", "purple", "orange", "black")
DISTRACTOR_COLOURS = ("green", "pink", "cyan", "brown")
DIGIT_TRAIN_CLASSES = tuple(range(7))  # digits 7, 8 and 9 become the distractors

_SUPERSAMPLE = 3  # drawn this many times larger, then shrunk, for smooth edges
# Marks a finished dataset and the arguments that made it.
_PARAMS_FILE = ".retrieval-lab-demo.json"


def write_demo_dataset(
    out_dir: Path,
    seed: int = 0,
    n_classes: int = 12,
    train_per_class: int = 3,
    test_per_class: int = 8,
    n_distractor_classes: int = 5,
    distractor_per_class: int = 8,
    size: int = 96,
) -> Path:
    """Write a coloured-shapes dataset under `out_dir`/demo-shapes and return that folder.

    Classes such as "red circle" get train/<label>/train_NNNN.jpg and test/<label>/test_NNNN.jpg;
    distractor classes such as "green star" go to test/-1/. Every image jitters position, scale,
    rotation, colour, background tint and noise. Test file numbers are shuffled so names do not
    reveal labels. texts.txt holds one prompt per train class. Same arguments, same bytes.
    """
    params = dict(
        kind="shapes",
        seed=seed,
        n_classes=n_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        n_distractor_classes=n_distractor_classes,
        distractor_per_class=distractor_per_class,
        size=size,
    )
    limits = {
        "n_classes": (1, len(TRAIN_SHAPES) * len(TRAIN_COLOURS)),
        "n_distractor_classes": (0, len(DISTRACTOR_SHAPES) * len(DISTRACTOR_COLOURS)),
        "size": (16, 1024),
    }
    for name in (
        "n_classes",
        "train_per_class",
        "test_per_class",
        "n_distractor_classes",
        "distractor_per_class",
        "size",
    ):
        _check_count(name, params[name], *limits.get(name, (1, 10_000)))
    classes = _combinations(TRAIN_SHAPES, TRAIN_COLOURS, n_classes)
    distractors = _combinations(DISTRACTOR_SHAPES, DISTRACTOR_COLOURS, n_distractor_classes)

    def write(root: Path) -> None:
        rng = np.random.default_rng(seed)
        train = [(cls, _class_name(cls)) for cls in classes for _ in range(train_per_class)]
        test = [(cls, _class_name(cls)) for cls in classes for _ in range(test_per_class)]
        test += [(cls, DISTRACTOR) for cls in distractors for _ in range(distractor_per_class)]
        for split, drawn in ((TRAIN, train), (TEST, test)):
            numbered = _numbered(drawn, rng if split == TEST else None)
            for number, ((shape, colour), label) in numbered:
                image = _draw_shape(rng, shape, COLOURS[colour], size)
                _save(image, root / split / label, f"{split}_{number:04d}.jpg")
        prompts = prompts_for(_class_name(cls) for cls in classes)
        (root / "texts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")

    return _write_once(Path(out_dir) / DEMO_FOLDER, params, write)


def write_digits_dataset(out_dir: Path, seed: int = 0) -> Path:
    """Write scikit-learn's bundled 8x8 digits, upscaled to 64x64 grey PNGs, under `out_dir`/digits.

    Digits 0-6 are the classes with 3 train images each; their other images and every 7, 8 and 9
    (as distractors, label -1) form the test split, about 30% distractors.
    """

    def write(root: Path) -> None:
        # Imported here: only writing this dataset needs scikit-learn, and a dashboard that finds
        # it already written paints its first page without that second-long import.
        from sklearn.datasets import load_digits

        digits = load_digits()
        rng = np.random.default_rng(seed)
        train_rows = {
            int(row)
            for digit in DIGIT_TRAIN_CLASSES
            for row in rng.choice(np.flatnonzero(digits.target == digit), size=3, replace=False)
        }
        test_rows = [row for row in range(len(digits.target)) if row not in train_rows]
        for split, rows in ((TRAIN, sorted(train_rows)), (TEST, test_rows)):
            for number, row in _numbered(rows, rng if split == TEST else None):
                digit = int(digits.target[row])
                label = str(digit) if digit in DIGIT_TRAIN_CLASSES else DISTRACTOR
                # 0..16 ink levels become dark strokes on white, the way digits are usually seen.
                grey = (255 - digits.images[row] * (255 / 16)).round().astype(np.uint8)
                image = Image.fromarray(grey).resize((64, 64), Image.Resampling.BICUBIC)
                _save(image, root / split / label, f"{split}_{number:04d}.png")

    return _write_once(Path(out_dir) / DIGITS_FOLDER, {"kind": "digits", "seed": seed}, write)


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _combinations(
    shapes: tuple[str, ...], colours: tuple[str, ...], count: int
) -> list[tuple[str, str]]:
    """`count` distinct (shape, colour) pairs that cycle through every shape and colour early."""
    pairs = []
    for index in range(count):
        lap = index // len(shapes)
        pairs.append((shapes[index % len(shapes)], colours[(index + lap) % len(colours)]))
    return pairs


def _class_name(shape_and_colour: tuple[str, str]) -> str:
    shape, colour = shape_and_colour
    return f"{colour} {shape}"


def _numbered(entries: list, rng: np.random.Generator | None) -> list[tuple[int, object]]:
    """Pair entries with file numbers, shuffled when `rng` is given so numbers hide the class."""
    numbers = rng.permutation(len(entries)) if rng is not None else range(len(entries))
    return [(int(number), entry) for number, entry in zip(numbers, entries)]


def _save(image: Image.Image, folder: Path, file_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / file_name, quality=92)  # PNG ignores quality


def _write_once(root: Path, params: dict, write: Callable[[Path], None]) -> Path:
    """Build the dataset in a scratch folder, then move it to `root`: never a half-written root.

    An existing `root` made with the same arguments is reused; anything else there is left alone.
    """
    if _made_with(root, params):
        return root
    if root.exists():
        raise ValueError(
            f"{root} already exists and was not written by these arguments; "
            "delete it or pass another out_dir"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(scratch)
        (scratch / _PARAMS_FILE).write_text(json.dumps(params), encoding="utf-8")
        try:
            os.replace(scratch, root)
        except OSError:
            if not _made_with(root, params):  # else another process finished it first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def _made_with(root: Path, params: dict) -> bool:
    marker = root / _PARAMS_FILE
    return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == params


# --------------------------------------------------------------------------- drawing


def _draw_shape(
    rng: np.random.Generator, shape: str, rgb: tuple[int, int, int], size: int
) -> Image.Image:
    big = size * _SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(195, 256, 3))
    colour = tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-25, 26, 3), 0, 255))
    radius = big * rng.uniform(0.22, 0.34)
    centre = big / 2 + rng.uniform(-0.12, 0.12, 2) * big
    angle = rng.uniform(0, 2 * math.pi)
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    _SHAPES[shape](draw, centre, radius, angle, colour, background)
    small = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    noisy = small + rng.normal(0, 6, small.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def _disc(draw: ImageDraw.ImageDraw, centre: np.ndarray, radius: float, fill: tuple) -> None:
    x, y = centre
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)


def _polygon(unit_points: list[tuple[float, float]]) -> Callable:
    """A drawer for a polygon given in unit coordinates, scaled, rotated and moved per image."""
    points = np.array(unit_points, dtype=np.float64)

    def draw_polygon(draw, centre, radius, angle, colour, background) -> None:
        turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        placed = points @ turn.T * radius + centre
        draw.polygon([tuple(p) for p in placed], fill=colour)

    return draw_polygon


def _around(corners: int, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    """`corners` points evenly around the centre, their distances cycling through `radii`."""
    return [
        (radius * math.cos(2 * math.pi * k / corners), radius * math.sin(2 * math.pi * k / corners))
        for k, radius in zip(range(corners), cycle(radii))
    ]


def _heart_points() -> list[tuple[float, float]]:
    steps = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(steps) ** 3
    y = -(13 * np.cos(steps) - 5 * np.cos(2 * steps) - 2 * np.cos(3 * steps) - np.cos(4 * steps))
    return list(zip(x / 17, y / 17))


def _circle(draw, centre, radius, angle, colour, background) -> None:
    _disc(draw, centre, radius, colour)


def _ring(draw, centre, radius, angle, colour, background) -> None:
    _disc(draw, centre, radius, colour)
    _disc(draw, centre, radius * 0.55, background)


def _crescent(draw, centre, radius, angle, colour, background) -> None:
    _disc(draw, centre, radius, colour)
    bite = centre + 0.45 * radius * np.array([math.cos(angle), math.sin(angle)])
    _disc(draw, bite, radius * 0.85, background)


_ARM = 0.33  # half-width of the cross's arms
_SHAPES: dict[str, Callable] = {
    "circle": _circle,
    "ring": _ring,
    "crescent": _crescent,
    "square": _polygon(_around(4)),
    "triangle": _polygon(_around(3)),
    "hexagon": _polygon(_around(6)),
    "star": _polygon(_around(10, (1.0, 0.42))),
    "diamond": _polygon([(0, 1), (0.55, 0), (0, -1), (-0.55, 0)]),
    "cross": _polygon(
        [
            (_ARM, _ARM),
            (1, _ARM),
            (1, -_ARM),
            (_ARM, -_ARM),
            (_ARM, -1),
            (-_ARM, -1),
            (-_ARM, -_ARM),
            (-1, -_ARM),
            (-1, _ARM),
            (-_ARM, _ARM),
            (-_ARM, 1),
            (_ARM, 1),
        ]
    ),
    "heart": _polygon(_heart_points()),
}
