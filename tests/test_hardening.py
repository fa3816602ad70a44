"""Hardening: hostile inputs end to end, property tests of the loaders, metrics and threshold maths,
a disk that fills up mid-write, and the security rules (XSRF, upload cap, confinement, no unsafe loads).
"""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from input_files import (
    EXPECTED_DISPLAY,
    SVG,
    Upload,
    bomb_png,
    encode,
    write_files,
    write_raw_parquet,
)
from PIL import Image
from test_pages import run_page

from core.analysis.loading import load_embeddings
from core.analysis.pipeline import analyse
from core.detection.distractors import ThresholdSweep
from core.detection.metrics import distractor_report, precision_recall_f1
from core.embedding.cache import EmbeddingCache
from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.io.archives import safe_extract_zip
from core.io.images import ImageRejected, load_image
from core.io.layouts import load_dataset
from core.io.parquet import read_embeddings, write_embeddings
from core.io.texts import load_texts
from core.paths import MAX_NAME_BYTES, confined_path, safe_file_name
from core.prediction.config import PredictConfig
from core.prediction.metrics import average_precision_at_k, map_at_k
from core.prediction.predict import read_submission, write_submission
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.session.datasets import WorkspaceDatasets
from core.session.queries import texts_from_upload
from core.session.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
EXIF_ORIENTATION = 0x0112


def noisy(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """An RGB image of seeded noise: every seed gives different bytes, so no two files share a cache key."""
    width, height = size
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    )


def exif_jpeg(orientation: int, seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(noisy(seed), "JPEG", exif=exif)


def colour_mode_files() -> dict[str, bytes]:
    """One image of every awkward colour mode the loader converts to RGB."""
    rgba = noisy(21).convert("RGBA")
    rgba.putalpha(128)
    frames = [noisy(26), noisy(27)]
    sixteen_bit = np.random.default_rng(23).integers(0, 65536, (30, 40), dtype=np.uint16)
    return {
        "cmyk.jpg": encode(noisy(20).convert("CMYK"), "JPEG"),
        "rgba.png": encode(rgba),
        "palette.gif": encode(noisy(22).convert("P"), "GIF"),
        "grey16.png": encode(Image.fromarray(sixteen_bit)),
        "bilevel.png": encode(noisy(24).convert("1")),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    }


# --------------------------------------------------------------------------- hostile inputs, end to end

TOP = "my data/"  # the archive wraps its layout in one folder, as zipping a folder does


def hostile_zip(path: Path) -> tuple[set[str], dict[str, str]]:
    """A zip mixing good images with every kind of bad file and unsafe entry.

    Returns the ids the good images get and, for every refused name, a fragment of its reason.
    """
    whole = encode(noisy(30, (64, 64)), "JPEG")
    good = {
        "train/cat/cat 1.jpg": encode(noisy(1), "JPEG"),
        "train/cat/same.jpg": encode(noisy(2), "JPEG"),
        "train/dog/dog1.jpg": encode(noisy(3), "JPEG"),
        "train/dog/dog2.png": encode(noisy(4)),
        "train/pão de queijo/фото 1.jpg": encode(noisy(5), "JPEG"),
        "train/pão de queijo/2.jpg": encode(noisy(6), "JPEG"),
        "test/same.jpg": encode(noisy(7), "JPEG"),
        "test/plain.jpg": encode(noisy(8), "JPEG"),
        **{f"test/{name}": data for name, data in colour_mode_files().items()},
        **{f"test/exif-{n}.jpg": exif_jpeg(n, seed=40 + n) for n in EXPECTED_DISPLAY},
    }
    bad = {
        "train/cat/text.jpg": (b"just some text, not a picture", "not an image (the contents"),
        "train/dog/empty.png": (b"", "empty file"),
        "test/bomb.png": (bomb_png(), "decompression bomb"),
        "test/drawing.svg": (SVG, "not an image file type (.svg)"),
        "test/drawing.png": (SVG, "looks like SVG/XML"),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
        # zipfile warns about the duplicate entry on purpose
        warnings.simplefilter("ignore", UserWarning)
        for name, data in good.items():
            archive.writestr(TOP + name, data)
        for name, (data, _) in bad.items():
            archive.writestr(TOP + name, data)
        archive.writestr(TOP + "test/cut.jpg", whole[: len(whole) // 2])
        archive.writestr("../escape.jpg", encode(noisy(9), "JPEG"))
        archive.writestr("/absolute.jpg", encode(noisy(10), "JPEG"))
        archive.writestr(TOP + "test/inner.zip", b"PK\x03\x04")
        archive.writestr(TOP + "train/dog/dog1.jpg", encode(noisy(11), "JPEG"))
        link = zipfile.ZipInfo(TOP + "train/cat/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    good_ids = {Path(name).name for name in good} | {
        "test/same.jpg"
    }  # the second same.jpg keeps its path
    reasons = (
        {name: reason for name, (_, reason) in bad.items()}
        | {
            "cut.jpg": "truncated or corrupt image",  # its header is fine: refused when decoded, by item id
            "../escape.jpg": "climbs out of the archive",
            "/absolute.jpg": "absolute path",
            TOP + "test/inner.zip": "nested zip",
            TOP + "train/dog/dog1.jpg": "duplicate entry name",
            TOP + "train/cat/link.jpg": "symbolic link",
        }
    )
    return good_ids, reasons


def test_a_hostile_zip_is_refused_file_by_file_and_the_rest_is_embedded_and_analysed(tmp_path):
    archive = tmp_path / "hostile.zip"
    good_ids, expected_reasons = hostile_zip(archive)
    config = EmbedConfig(model=BASELINE_MODEL)
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first = load_embeddings(archive, config, cache, work_dir=tmp_path / "work")
        assert set(first.embeddings.ids) == good_ids
        reasons = {r.name: r.reason for r in first.rejected}
        assert set(reasons) == set(expected_reasons)
        for name, fragment in expected_reasons.items():
            assert fragment in reasons[name], (name, reasons[name])
        report = analyse(first.embeddings).report()
        assert report.test_items == sum(split == TEST for split in first.embeddings.splits)

        # Opened again, every vector comes from the cache: the refusals cost nothing already computed.
        again = load_embeddings(archive, config, cache, work_dir=tmp_path / "work")
    assert (again.computed, again.from_cache) == (0, len(good_ids))
    assert {r.name for r in again.rejected} == set(expected_reasons)
    assert not list(tmp_path.glob("escape*")) and not (tmp_path / "work" / "escape.jpg").exists()


@pytest.mark.parametrize("orientation", sorted(EXPECTED_DISPLAY))
def test_every_exif_orientation_of_a_jpeg_is_applied(orientation):
    data = exif_jpeg(orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(
        np.asarray(load_image(data)), EXPECTED_DISPLAY[orientation](stored)
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "image,label\na.jpg,café\n".encode("latin-1"),
            r"train.csv is not UTF-8 text \(byte \d+: invalid",
        ),
        ("image,label\n".encode("utf-16"), r"train.csv is not UTF-8 text"),
        (
            b"image,label\na.jpg," + b"x" * 200_000 + b"\n",
            r"train.csv is not a readable CSV file: field larger than",
        ),
    ],
    ids=["latin-1", "utf-16", "huge cell"],
)
def test_an_unreadable_csv_is_one_clear_error(tmp_path, content, message):
    root = write_files(
        tmp_path / "d",
        {"a.jpg": encode(noisy(0), "JPEG"), "train.csv": content, "texts.csv": content},
    )
    with pytest.raises(ValueError, match=message):
        load_dataset(root)
    with pytest.raises(ValueError, match=message.replace("train.csv", "texts.csv")):
        load_texts(root / "texts.csv", column="label")


def test_csv_rows_with_missing_or_extra_cells_and_minus_one_labels_are_refused_row_by_row(tmp_path):
    images = {
        f"images/{name}.jpg": encode(noisy(seed), "JPEG") for seed, name in enumerate("abcde")
    }
    train_csv = b"image,label\nimages/a.jpg\nimages/b.jpg,cat,extra,cells\nimages/c.jpg, -1 \nimages/d.jpg,\t\nimages/e.jpg,dog\n"
    dataset = load_dataset(write_files(tmp_path / "d", {**images, "train.csv": train_csv}))
    assert [(item.id, item.label) for item in dataset.items] == [("b.jpg", "cat"), ("e.jpg", "dog")]
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert reasons["images/a.jpg"] == "empty label in train.csv row 2"
    assert "cannot be a train class" in reasons["images/c.jpg"]
    assert reasons["images/d.jpg"] == "empty label in train.csv row 5"


def table(
    n_train: int,
    test_truth: list[str | None],
    dim: int = 8,
    identical: bool = False,
    n_classes: int = 3,
) -> Embeddings:
    """Train rows over `n_classes` classes and test rows with the given truth, as unit vectors."""
    n = n_train + len(test_truth)
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    if identical:
        vectors[:] = vectors[0]
    return Embeddings(
        ids=np.array([f"item{i}.jpg" for i in range(n)]),
        splits=np.array([TRAIN] * n_train + [TEST] * len(test_truth)),
        labels=np.array(
            [f"class{i % n_classes}" for i in range(n_train)] + test_truth, dtype=object
        ),
        vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        model="random",
    )


@pytest.mark.parametrize(
    "truth", [["class0"], ["class1", DISTRACTOR]], ids=["one test image", "two test images"]
)
@pytest.mark.parametrize("contamination", [0.0, 0.5, 1.0])
def test_a_test_set_of_one_or_two_images_is_analysed_end_to_end(truth, contamination):
    analysis = analyse(table(6, truth), PredictConfig(contamination=contamination))
    report = analysis.report()
    assert report.test_items == len(truth)
    assert report.flagged == round(contamination * len(truth))
    assert 0.0 <= report.measured_map <= 1.0
    assert len(analysis.predictions()) == len(truth)
    assert analysis.dbscan().shape == (len(truth),)
    _best_threshold, best_map = analysis.sweep.best_map_threshold()
    assert best_map >= report.measured_map - 1e-12
    assert np.isfinite(analysis.train_loo_scores).all()


def test_an_empty_test_set_is_a_clear_error():
    with pytest.raises(ValueError, match="the test split is empty"):
        analyse(table(6, []))


def test_k_larger_than_train_is_clamped_with_a_note():
    analysis = analyse(
        table(4, ["class0", DISTRACTOR, "class1"], n_classes=2),
        PredictConfig(k=50, score_mode="mean", score_k=50),
    )
    assert analysis.neighbours.k <= 4
    assert all(len(row) <= 3 for row in analysis.predictions())  # "-1" and the two classes at most
    assert any("fewer than k=50" in note for note in analysis.notes)
    assert 0.0 <= analysis.report().measured_map <= 1.0


def test_identical_embeddings_tie_with_a_note_instead_of_a_crash():
    embeddings = table(
        8, ["class0", DISTRACTOR, "class1", "class2", DISTRACTOR], identical=True, n_classes=4
    )
    analysis = analyse(embeddings, PredictConfig(contamination=0.4))
    assert any("tie" in note and "not the 40% asked for" in note for note in analysis.notes)
    assert analysis.report().flagged in (0, 5)  # tied scores move together
    np.testing.assert_allclose(analysis.train_loo_scores, 1.0, atol=1e-5)
    assert not analysis.dbscan().any()  # one cluster, train included
    assert np.isfinite(analyse(embeddings, PredictConfig(auto=True)).threshold)


def test_parquet_with_unusable_rows_is_analysed_on_the_rest(tmp_path):
    good = table(6, ["class0", DISTRACTOR, "class2", "class1"], dim=3)
    bad_rows = {
        "nan.jpg": [float("nan"), 1.0, 0.0],
        "zero.jpg": [0.0, 0.0, 0.0],
        "none.jpg": None,
        "item0.jpg": [1.0, 0.0, 0.0],
    }
    path = write_raw_parquet(
        tmp_path / "vectors.parquet",
        {
            "id": [*good.ids.tolist(), *bad_rows],
            "split": [*good.splits.tolist(), *[TEST] * len(bad_rows)],
            "label": [*good.labels.tolist(), *[None] * len(bad_rows)],
            "embedding": [*good.vectors.tolist(), *bad_rows.values()],
        },
    )
    loaded = load_embeddings(path)
    assert {r.name: r.reason for r in loaded.rejected} == {
        "nan.jpg": "embedding has NaN or infinite values",
        "zero.jpg": "embedding is all zeros (norm 0)",
        "none.jpg": "missing embedding",
        "item0.jpg": "id repeated (first at row 0)",
    }
    assert analyse(loaded.embeddings).report().test_items == 4


# --------------------------------------------------------------------------- property tests: loaders

SAMPLE_IMAGES = [
    encode(noisy(50, (12, 9)), "PNG"),
    encode(noisy(51, (12, 9)), "JPEG"),
    exif_jpeg(6, seed=52),
    *colour_mode_files().values(),
    encode(noisy(53, (12, 9)), "BMP"),
    encode(noisy(54, (12, 9)), "WEBP"),
    encode(noisy(55, (12, 9)), "TIFF"),
]


@st.composite
def damaged_images(draw) -> bytes:
    """A real image file with a few bytes overwritten and possibly cut short."""
    data = bytearray(draw(st.sampled_from(SAMPLE_IMAGES)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.binary(max_size=600), damaged_images()))
def test_any_bytes_give_an_rgb_image_or_a_one_line_reason(data):
    with warnings.catch_warnings():
        # Pillow warns about damaged metadata; the verdict is what counts
        warnings.simplefilter("ignore")
        try:
            image = load_image(data, name="upload.jpg")
        except ImageRejected as rejection:
            assert rejection.reason.strip() and "\n" not in rejection.reason
            return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


ENTRY_PARTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b.jpg",
        "ü ñ.png",
        "C:",
        "c:\\x",
        "\\",
        ".hidden",
        "__MACOSX",
        "in.zip",
        "a/b",
    ]
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.lists(ENTRY_PARTS, min_size=1, max_size=4).map("/".join), min_size=1, max_size=8
    ),
    links=st.lists(st.booleans(), max_size=8),
)
def test_no_zip_entry_name_writes_outside_the_extraction_folder(tmp_path_factory, names, links):
    folder = tmp_path_factory.mktemp("zip")
    archive = folder / "entries.zip"
    with zipfile.ZipFile(archive, "w") as writer, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, is_link in zip(names, links + [False] * len(names)):
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            writer.writestr(info, b"data")
    dest = folder / "out" / "dest"
    rejected = safe_extract_zip(archive, dest)
    assert all(r.reason.strip() for r in rejected)
    written = [path for path in folder.rglob("*") if path != archive and not path.is_dir()]
    assert all(path.resolve().is_relative_to(dest.resolve()) for path in written)
    assert not any(path.is_symlink() for path in folder.rglob("*"))


@given(st.text(max_size=400))
def test_a_sanitised_file_name_is_one_harmless_component(name):
    cleaned = safe_file_name(name)
    assert cleaned and len(cleaned.encode()) <= MAX_NAME_BYTES
    assert "/" not in cleaned and "\\" not in cleaned and "\0" not in cleaned
    assert not cleaned.startswith(".") and cleaned not in ("..", ".")


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["..", "/", "a", "ok", "link", ".", "~", " ", "\\", "é"]), max_size=8
    ).map("".join)
)
def test_a_confined_path_never_leaves_its_root(tmp_path_factory, relative):
    base = tmp_path_factory.getbasetemp() / "confined"
    root = base / "root"
    if not root.exists():
        (root / "ok").mkdir(parents=True)
        (root / "link").symlink_to(base)
    try:
        target = confined_path(root, relative)
    except ValueError as error:
        assert "outside the data root" in str(error)
    else:
        assert target.is_relative_to(root.resolve())


CSV_CELLS = st.sampled_from(
    ["a.jpg", "images/a.jpg", "../a.jpg", "/etc/passwd", "", " ", "-1", "cat", "é", '"', ",", "\n"]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(CSV_CELLS, max_size=4), max_size=6))
def test_any_train_csv_loads_inside_its_folder_or_fails_with_a_value_error(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("csv")
    write_files(root, {"a.jpg": encode(noisy(0), "JPEG"), "images/a.jpg": encode(noisy(1), "JPEG")})
    (root / "train.csv").write_text(
        "image,label\n" + "\n".join(",".join(row) for row in rows), encoding="utf-8"
    )
    try:
        dataset = load_dataset(root)
    except ValueError as error:
        assert str(error).strip()
        return
    assert all(item.path.resolve().is_relative_to(root.resolve()) for item in dataset.items)
    assert all(
        item.label and item.label.strip() and item.label != DISTRACTOR
        for item in dataset.split(TRAIN)
    )


# --------------------------------------------------------------------------- property tests: metrics and thresholds

LABELS = st.sampled_from(["a", "b", "c", "d", DISTRACTOR])


@given(LABELS, st.lists(LABELS, max_size=8), st.integers(1, 8))
def test_average_precision_is_the_reciprocal_rank_of_the_first_hit(truth, predicted, k):
    value = average_precision_at_k(truth, predicted, k)
    hits = [rank for rank, label in enumerate(predicted[:k], start=1) if label == truth]
    assert value == (1.0 / hits[0] if hits else 0.0)


@given(
    st.lists(st.tuples(LABELS, st.lists(LABELS, max_size=6)), min_size=1, max_size=20),
    st.integers(1, 6),
    st.randoms(use_true_random=False),
)
def test_map_ignores_row_order_and_lies_between_zero_and_one(pairs, k, rnd):
    truth, rows = [t for t, _ in pairs], [r for _, r in pairs]
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    value = map_at_k(truth, rows, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(map_at_k([t for t, _ in shuffled], [r for _, r in shuffled], k))


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_precision_recall_and_f1_are_shares_with_f1_between_them(pairs):
    truth, flags = (np.array(column, dtype=bool) for column in zip(*pairs))
    report = distractor_report(truth, flags)
    for value in (report.precision, report.recall, report.f1):
        assert 0.0 <= value <= 1.0
    if report.precision and report.recall:
        assert (
            min(report.precision, report.recall) - 1e-12
            <= report.f1
            <= max(report.precision, report.recall) + 1e-12
        )
    assert (report.flagged, report.actual) == (int(flags.sum()), int(truth.sum()))
    precision, recall, f1 = precision_recall_f1(
        [int((truth & flags).sum())], [report.flagged], [report.actual]
    )
    assert (float(precision[0]), float(recall[0]), float(f1[0])) == pytest.approx(
        (report.precision, report.recall, report.f1)
    )


SCORES = st.lists(
    st.floats(-1, 1, allow_nan=False).map(lambda x: round(x, 2)), min_size=1, max_size=40
)
THRESHOLDS = st.lists(st.floats(-1.5, 1.5, allow_nan=False), min_size=1, max_size=10)


@given(SCORES, THRESHOLDS, st.randoms(use_true_random=False))
def test_the_sweep_answers_exactly_what_a_full_recompute_does(scores, thresholds, rnd):
    n = len(scores)
    scores = np.array(scores)
    if_flagged = np.array([rnd.choice([0.0, 1.0]) for _ in range(n)])
    if_kept = np.array([rnd.choice([0.0, 0.2, 0.5, 1.0]) for _ in range(n)])
    truth = np.array([rnd.random() < 0.3 for _ in range(n)])
    sweep = ThresholdSweep(scores, if_flagged, if_kept, truth)
    for threshold in sorted(thresholds):
        flags = scores < threshold
        assert sweep.flagged_count(threshold) == flags.sum()
        assert sweep.map_at(threshold) == pytest.approx(np.where(flags, if_flagged, if_kept).mean())
        expected = precision_recall_f1(
            int((flags & truth).sum()), int(flags.sum()), int(truth.sum())
        )
        assert tuple(sweep.detection_at(threshold)) == pytest.approx(tuple(expected))
    contaminations = sweep.contamination(np.sort(np.array(thresholds)))
    assert np.all(np.diff(contaminations) >= 0)  # a higher threshold never flags fewer
    best_threshold, best_map = sweep.best_map_threshold()
    assert best_map >= max(sweep.map_at(np.array(thresholds))) - 1e-12
    assert best_map == pytest.approx(sweep.map_at(best_threshold))


@given(SCORES, st.floats(0, 1))
def test_threshold_for_and_contamination_are_inverse_up_to_ties(scores, share):
    sweep = ThresholdSweep(np.array(scores))
    threshold = sweep.threshold_for(share)
    flagged = int(sweep.flagged_count(threshold))
    target = round(share * len(scores))
    values = np.array(scores)
    # Exactly the share asked for, unless a group of equal scores straddles it.
    assert flagged == target or (values == threshold).sum() > 1 or flagged == len(scores)
    assert (values < threshold).sum() == flagged


# --------------------------------------------------------------------------- a disk that fills up mid-write

# bytes any file of the child may grow to: far below what it tries to write
FULL_DISK_LIMIT = 96 * 1024
FULL_DISK_WRITER = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from core.embedding.cache import EmbeddingCache
from core.records import Embeddings
from core.io.parquet import write_embeddings
from core.prediction.predict import write_submission

folder, limit = Path(sys.argv[1]), int(sys.argv[2])
rows = 20_000
vectors = np.random.default_rng(1).normal(size=(rows, 64)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
ids = [f"new-{i}.jpg" for i in range(rows)]
new_embeddings = Embeddings(np.array(ids), np.array(["test"] * rows), np.array([None] * rows, dtype=object), vectors, "new")
writes = {
    "parquet": lambda: write_embeddings(folder / "embeddings.parquet", new_embeddings),
    "submission": lambda: write_submission(folder / "submission.csv", ids, [["a", "b", "c", "d", "e"]] * rows),
    "cache": lambda: EmbeddingCache(folder / "cache.sqlite").put_many("model", dict(zip(ids, vectors))),
}
# Past the limit a write fails with EFBIG, as on a full disk, instead of SIGXFSZ killing the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = {}
for name, write in writes.items():
    try:
        write()
    except Exception as error:
        errors[name] = f"{type(error).__name__}: {error}"
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """Good files, then a child process whose every write over them runs out of space; returns both."""
    folder = tmp_path_factory.mktemp("full-disk")
    previous = table(20, ["class0", DISTRACTOR] * 5)
    write_embeddings(folder / "embeddings.parquet", previous)
    write_submission(
        folder / "submission.csv", ["t1.jpg", "t2.jpg"], [["cat", "dog"], [DISTRACTOR, "cat"]]
    )
    with EmbeddingCache(folder / "cache.sqlite") as cache:
        cache.put_many("model", dict(zip(previous.ids, previous.vectors)))
    saved = {
        name: (folder / name).read_bytes() for name in ("embeddings.parquet", "submission.csv")
    }
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(folder), str(FULL_DISK_LIMIT)],
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    return folder, json.loads(child.stdout.splitlines()[-1]), previous, saved


def test_a_full_disk_keeps_the_previous_embeddings_parquet(full_disk):
    folder, errors, previous, saved = full_disk
    assert "File too large" in errors["parquet"]
    assert (folder / "embeddings.parquet").read_bytes() == saved["embeddings.parquet"]
    assert read_embeddings(folder / "embeddings.parquet").ids.tolist() == previous.ids.tolist()
    assert not list(folder.glob(".*partial*"))


def test_a_full_disk_keeps_the_previous_submission(full_disk):
    folder, errors, _, saved = full_disk
    assert "File too large" in errors["submission"]
    assert (folder / "submission.csv").read_bytes() == saved["submission.csv"]
    assert read_submission(folder / "submission.csv") == {
        "t1.jpg": ["cat", "dog"],
        "t2.jpg": [DISTRACTOR, "cat"],
    }
    assert not list(folder.glob(".*partial*"))


def test_a_full_disk_keeps_the_cached_rows_and_the_cache_resumes(full_disk):
    folder, errors, previous, _ = full_disk
    assert errors["cache"].startswith("OSError: could not write to the embedding cache")
    assert "vectors cached before are kept" in errors["cache"]
    with sqlite3.connect(folder / "cache.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a cache set aside as corrupt would warn
        with EmbeddingCache(folder / "cache.sqlite") as cache:
            assert cache.count("model") == len(previous.ids)
            found = cache.get_many("model", previous.ids)
            np.testing.assert_array_equal(
                np.stack([found[i] for i in previous.ids]), previous.vectors
            )
            # space again: writing resumes
            cache.put_many("model", {"after.jpg": previous.vectors[0]})
            assert cache.count("model") == len(previous.ids) + 1


# --------------------------------------------------------------------------- security


def test_the_server_config_turns_xsrf_protection_on_and_caps_uploads():
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))[
        "server"
    ]
    assert server["enableXsrfProtection"] is True
    # In megabytes; Streamlit's default is 200. A zip's unpacked size is capped separately (ZipLimits).
    # The server holds an upload about twice while it is in the uploader (test_upload_memory.py):
    # a cap above 1 GB would let one upload take over 2 GB.
    assert isinstance(server["maxUploadSize"], int) and 0 < server["maxUploadSize"] <= 1024


# Calls that run code or unpickle objects when handed a hostile file.
CODE_RUNNING_CALLS = {"eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads", "marshal.load",
                      "marshal.loads", "dill.load", "dill.loads", "cloudpickle.load", "joblib.load", "shelve.open",
                      "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load", "st.html",
                      "components.html", "st.components.v1.html"}  # fmt: skip
SAFE_WHEN = {"np.load": ("allow_pickle", False), "numpy.load": ("allow_pickle", False),
             "torch.load": ("weights_only", True), "yaml.load": ("Loader", "SafeLoader")}  # fmt: skip
UNSAFE_KEYWORDS = {"unsafe_allow_html": True, "trust_remote_code": True}
SCANNED = sorted([*(REPO / "core").glob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_value(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            value = keyword.value
            return value.value if isinstance(value, ast.Constant) else _dotted(value).split(".")[-1]
    return None


def unsafe_uses(source: str) -> list[str]:
    """Every place in `source` that could run code from a user's file or render a user's HTML."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            found += [
                f"line {node.lineno}: import {m}"
                for m in modules
                if m.split(".")[0] in ("pickle", "marshal", "dill", "shelve", "cloudpickle")
            ]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in CODE_RUNNING_CALLS:
            found.append(f"line {node.lineno}: {name}()")
        if name in SAFE_WHEN:
            keyword, safe = SAFE_WHEN[name]
            if _keyword_value(node, keyword) != safe:
                found.append(f"line {node.lineno}: {name}() without {keyword}={safe}")
        for keyword, unsafe in UNSAFE_KEYWORDS.items():
            if _keyword_value(node, keyword) == unsafe:
                found.append(f"line {node.lineno}: {keyword}={unsafe}")
    return found


def test_the_scan_catches_every_kind_of_unsafe_load():
    hostile = """
import pickle
pickle.loads(data); np.load(path); np.load(path, allow_pickle=True); torch.load(path); eval(text)
st.markdown(label, unsafe_allow_html=True); AutoModel.from_pretrained(name, trust_remote_code=True)
yaml.load(text, Loader=yaml.Loader); st.html(label)
"""
    assert len(unsafe_uses(hostile)) == 10
    safe = "np.load(path, allow_pickle=False); torch.load(path, weights_only=True); model.eval(); st.markdown(label)"
    assert unsafe_uses(safe) == []


@pytest.mark.parametrize("path", SCANNED, ids=lambda path: path.relative_to(REPO).as_posix())
def test_no_code_runs_from_user_files_and_no_user_html_is_rendered(path):
    assert unsafe_uses(path.read_text(encoding="utf-8")) == []


# Ways a script in the page turns a string into markup or code.
MARKUP_FROM_STRINGS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc|setAttribute\(\s*[\"']on"
)
SCRIPTS = sorted((REPO / "pages").glob("*.js"))


def test_the_scan_catches_markup_made_from_strings():
    hostile = [
        "div.innerHTML = label;",
        "node.insertAdjacentHTML('beforeend', text)",
        "eval(code)",
        "a.setAttribute('onclick', x)",
    ]
    assert all(MARKUP_FROM_STRINGS.search(line) for line in hostile)
    assert not MARKUP_FROM_STRINGS.search(
        "node.textContent = label; input.setAttribute('aria-label', label)"
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_the_dashboards_own_scripts_set_text_only(path):
    # A component's script runs in the app page: text from data must never become markup there.
    assert SCRIPTS and not MARKUP_FROM_STRINGS.findall(path.read_text(encoding="utf-8"))


def test_uploads_with_hostile_names_land_inside_the_workspace(workspace, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # a name used as a relative path would land under tmp_path, where it is looked for
    monkeypatch.chdir(cwd)
    ws = Workspace("hostile-names")
    # writing the demo and digits is not the point here
    datasets = WorkspaceDatasets(ws, builtin=[])
    images = {
        name: encode(noisy(seed), "JPEG")
        for seed, name in enumerate(["good.jpg", "фото 1.jpg", "dog.jpg"])
    }
    uploads = [
        Upload("../../train.csv", "image,label\ngood.jpg,cat\nфото 1.jpg,cat\n".encode()),
        Upload("good.jpg", images["good.jpg"]),
        Upload("фото 1.jpg", images["фото 1.jpg"]),
        Upload("..\\..\\dog.jpg", images["dog.jpg"]),
        Upload("/tmp/evil-upload.jpg", encode(noisy(9), "JPEG")),
        Upload("../../.bashrc.jpg", encode(noisy(10), "JPEG")),
    ]
    entry = datasets.add_upload("../../../outside", uploads)
    dataset = load_dataset(entry.source)
    assert {item.id for item in dataset.split(TRAIN)} == {"good.jpg", "фото 1.jpg"}
    assert {item.id for item in dataset.split(TEST)} == {"dog.jpg", "evil-upload.jpg", "bashrc.jpg"}

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("train/cat/a.jpg", encode(noisy(11), "JPEG"))
        archive.writestr("../../escape.jpg", encode(noisy(12), "JPEG"))
    zip_entry = datasets.add_upload("zip", [Upload("../../../evil name.zip", zipped.getvalue())])
    assert texts_from_upload(ws, Upload("../../../texts.txt", b"a red circle\n")) == [
        "a red circle"
    ]

    for source in (entry.source, zip_entry.source):
        assert Path(source).resolve().is_relative_to(ws.files.resolve())
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(ws.files)]
    assert {p.relative_to(workspace).as_posix() for p in outside} <= {
        "workspaces.sqlite",
        "workspaces.sqlite-wal",
        "workspaces.sqlite-shm",
    }
    assert not Path("/tmp/evil-upload.jpg").exists()


def test_the_folder_input_refuses_symlinks_and_absolute_paths_out_of_the_data_root(
    workspace, tmp_path, monkeypatch
):
    layout = {"train/cat/a.jpg": encode(noisy(1), "JPEG"), "test/t.jpg": encode(noisy(2), "JPEG")}
    # a valid dataset, so only confinement can refuse it
    secret = write_files(tmp_path / "secret", layout)
    root = tmp_path / "root"
    write_files(root / "ok", layout)
    (root / "link").symlink_to(secret)
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    ws = Workspace("confined")
    datasets = WorkspaceDatasets(ws, builtin=[])
    for escape in (str(secret), "link", "ok/../../secret", "../secret"):
        with pytest.raises(ValueError, match="outside the data root"):
            datasets.add_folder(escape)
    assert datasets.add_folder("ok").source == str((root / "ok").resolve())
    assert [entry.source for entry in ws.datasets()] == [str((root / "ok").resolve())]


def test_a_full_disk_during_an_upload_is_an_error_on_the_page_not_a_crash(workspace, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    streamlit.cache_resource.clear()  # the built-in datasets belong to this test's workspace home
    monkeypatch.setattr(Workspace, "save_upload", no_space)
    app = run_page("data", "full-disk-upload")
    app.file_uploader(key="data_upload_0").upload(
        "shapes.zip", b"PK\x05\x06" + bytes(18), "application/zip"
    ).run()
    next(button for button in app.button if button.label == "Add upload").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert "No space left on device" in app.error[0].value
    assert Workspace("full-disk-upload").datasets() == []
