"""Tests for core.io.ingest: image loading, dataset layouts, zip safety, Parquet embeddings, texts."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.io import ingest
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.io.ingest import (
    IMAGE_EXTENSIONS,
    MODEL_METADATA_KEY,
    ImageRejected,
    ZipLimits,
    check_image_file,
    load_dataset,
    load_image,
    load_texts,
    prompts_for,
    read_embeddings,
    read_embeddings_checked,
    safe_extract_zip,
    write_embeddings,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(colour=RED, size=(32, 24)) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG")


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid 1x1 PNG whose header claims `width` x `height` pixels (CRC fixed up)."""
    data = bytearray(encode(Image.new("RGB", (1, 1), RED)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def write_zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def small_layout() -> dict[str, bytes]:
    return {
        "train/cat/c1.jpg": jpeg(RED),
        "train/cat/c2.jpg": jpeg(RED),
        "train/dog/d1.jpg": jpeg(BLUE),
        "test/t1.jpg": jpeg(RED),
        "test/t2.jpg": jpeg(BLUE),
    }


# --------------------------------------------------------------------------- load_image


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
BAD_CONTENTS = {
    "non-image bytes": (b"this is a text file, not a picture", "not an image"),
    "empty file": (b"", "empty file"),
    "svg": (SVG, "looks like SVG/XML"),
    "bomb header": (bomb_png(), "decompression bomb: 1,600,000,000 pixels exceeds the limit"),
}


@pytest.mark.parametrize("kind", BAD_CONTENTS)
def test_bad_contents_are_rejected_and_the_good_file_beside_still_loads(tmp_path, kind):
    content, reason = BAD_CONTENTS[kind]
    with pytest.raises(ImageRejected, match=reason) as raised:
        load_image(content, name="bad.jpg")
    assert reason in raised.value.reason and raised.value.name == "bad.jpg"

    root = write_files(tmp_path / "data", {"train/cat/good.jpg": jpeg(), "train/cat/bad.jpg": content})
    dataset = load_dataset(root)
    assert [item.id for item in dataset.items] == ["good.jpg"]
    assert [r.name for r in dataset.rejected] == ["train/cat/bad.jpg"]
    assert reason in dataset.rejected[0].reason
    assert load_image(dataset.items[0].path).size == (32, 24)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_rejected_on_decode_but_passes_the_cheap_header_check(tmp_path, fmt):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    whole = encode(noisy, fmt)
    cut = write_files(tmp_path, {"cut.img": whole[: len(whole) // 2]}) / "cut.img"
    good = write_files(tmp_path, {"good.img": whole}) / "good.img"

    assert check_image_file(cut) is None  # the header is intact; only decoding finds the damage
    with pytest.raises(ImageRejected, match="truncated or corrupt image"):
        load_image(cut)
    assert load_image(good).size == (64, 64)


def test_bomb_in_the_warning_band_is_an_error_not_a_warning(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # 100x100 is over the limit, under 2x
    with pytest.raises(ImageRejected, match=r"decompression bomb: 10,000 pixels \(100x100\) exceeds the limit of 6,000"):
        load_image(encode(Image.new("RGB", (100, 100))))
    assert load_image(encode(Image.new("RGB", (50, 50)))).size == (50, 50)


def test_unreadable_path_is_rejected_with_a_reason(tmp_path):
    with pytest.raises(ImageRejected, match="cannot read file"):
        load_image(tmp_path / "missing.jpg")


def test_check_image_file_reports_reason_or_none(tmp_path):
    files = write_files(tmp_path, {"good.png": encode(Image.new("RGB", (4, 4))), "bomb.png": bomb_png()})
    assert check_image_file(files / "good.png") is None
    assert check_image_file(files / "bomb.png").startswith("decompression bomb")


# The displayed image for each EXIF orientation, from the stored pixels, per the EXIF spec.
EXPECTED_DISPLAY = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(EXPECTED_DISPLAY))
def test_exif_orientation_is_applied(orientation):
    stored = (np.arange(3 * 5 * 3).reshape(3, 5, 3) * 5).astype(np.uint8)  # every pixel distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = load_image(encode(Image.fromarray(stored), "PNG", exif=exif))
    np.testing.assert_array_equal(np.asarray(loaded), EXPECTED_DISPLAY[orientation](stored))


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    loaded = pixels(load_image(encode(rgba)))[0]
    assert tuple(loaded[0]) == WHITE
    assert tuple(loaded[1]) == BLUE
    assert np.all(np.abs(loaded[2] - 127) <= 1)

    grey_alpha = Image.new("LA", (1, 1), (0, 0))
    assert tuple(pixels(load_image(encode(grey_alpha)))[0, 0]) == WHITE


def test_palette_transparency_becomes_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    loaded = pixels(load_image(encode(palette, "PNG", transparency=0)))[0]
    assert tuple(loaded[0]) == WHITE
    assert tuple(loaded[1]) == BLUE


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "TIFF", RED),
        (Image.new("L", (2, 2), 77), "PNG", (77, 77, 77)),
        (Image.new("1", (2, 2), 1), "PNG", WHITE),
        (Image.new("1", (2, 2), 0), "PNG", (0, 0, 0)),
        (Image.new("I;16", (2, 2), 65535), "PNG", WHITE),
        (Image.new("P", (2, 2), 3), "GIF", None),
    ],
    ids=["cmyk", "grey", "1-bit white", "1-bit black", "16-bit white", "palette"],
)
def test_colour_modes_become_rgb(image, fmt, expected):
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB" and loaded.size == image.size
    if expected is not None:
        assert tuple(pixels(loaded)[0, 0]) == expected


def test_sixteen_bit_grey_keeps_its_levels():
    levels = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 0, 50%, 100%
    loaded = pixels(load_image(encode(Image.fromarray(levels), "PNG")))
    assert loaded[0, :, 0].tolist() == [0, 128, 255]


def test_float_image_is_stretched_to_the_full_range():
    levels = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    loaded = pixels(load_image(encode(levels, "TIFF")))
    assert loaded[0, :, 0].tolist() == [0, 128, 255]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(animated)).n_frames == 2
    assert tuple(pixels(load_image(animated))[0, 0]) == RED


def test_draft_size_decodes_large_jpegs_smaller():
    big = jpeg(RED, size=(800, 800))
    assert load_image(big).size == (800, 800)
    drafted = load_image(big, draft_size=100)
    assert 100 <= drafted.width < 800
    assert load_image(encode(Image.new("RGB", (300, 300))), draft_size=100).size == (300, 300)
    with pytest.raises(ValueError, match="draft_size must be a positive pixel count"):
        load_image(big, draft_size=0)


# --------------------------------------------------------------------------- zips


def test_zip_refuses_unsafe_paths_and_extracts_the_rest(tmp_path):
    archive = write_zip(
        tmp_path / "a.zip",
        {
            "../escape.jpg": jpeg(),
            "train/../../escape2.jpg": jpeg(),
            "/absolute.jpg": jpeg(),
            "C:/drive.jpg": jpeg(),
            "C:\\windows.jpg": jpeg(),
            "inner.zip": b"PK",
            "train/cat/ok.jpg": jpeg(),
            "__MACOSX/train/cat/._ok.jpg": b"junk",
            "train/.DS_Store": b"junk",
        },
        symlinks={"train/cat/link.jpg": "/etc/passwd"},
    )
    dest = tmp_path / "out" / "dest"
    rejected = {r.name: r.reason for r in safe_extract_zip(archive, dest)}

    assert rejected["../escape.jpg"].startswith("path in zip climbs out")
    assert rejected["train/../../escape2.jpg"].startswith("path in zip climbs out")
    for name in ("/absolute.jpg", "C:/drive.jpg", "C:\\windows.jpg"):
        assert rejected[name].startswith("absolute path")
    assert rejected["train/cat/link.jpg"].startswith("symbolic link")
    assert rejected["inner.zip"] == "nested zip archives are not opened"
    assert len(rejected) == 7  # OS junk is skipped silently
    extracted = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert extracted == ["train/cat/ok.jpg"]
    assert not list((tmp_path / "out").glob("escape*")) and not (tmp_path / "escape.jpg").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


@pytest.mark.parametrize(
    "entries, limits, message",
    [
        ({"zeros.bin": bytes(2 << 20)}, ZipLimits(), "looks like a zip bomb: entry 'zeros.bin' expands"),
        ({f"f{i}.jpg": b"x" for i in range(5)}, ZipLimits(max_entries=3), "has 5 entries; the limit is 3"),
        ({"a.jpg": b"x" * 600, "b.jpg": b"y" * 600}, ZipLimits(max_total_bytes=1000),
         "would unpack to 1,200 bytes; the limit is 1,000"),
    ],
    ids=["ratio", "entries", "total bytes"],
)
def test_zip_over_limits_is_refused_before_writing_anything(tmp_path, entries, limits, message):
    archive = write_zip(tmp_path / "bomb.zip", entries)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=message):
        safe_extract_zip(archive, dest, limits)
    assert not dest.exists()


def test_small_compressible_files_are_not_mistaken_for_bombs(tmp_path):
    flat_bmp = encode(Image.new("RGB", (96, 96), RED), "BMP")  # ~27 kB that deflates > 200x
    archive = write_zip(tmp_path / "flat.zip", {"train/red/flat.bmp": flat_bmp})
    assert safe_extract_zip(archive, tmp_path / "dest") == []
    assert (tmp_path / "dest/train/red/flat.bmp").read_bytes() == flat_bmp


def test_lying_size_header_cannot_write_more_than_declared(tmp_path):
    archive = write_zip(tmp_path / "liar.zip", {"big.jpg": b"A" * 5000, "fine.jpg": jpeg()})
    data = bytearray(archive.read_bytes())
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)  # big.jpg comes first in both headers
        data[at + size_offset : at + size_offset + 4] = struct.pack("<I", 100)
    archive.write_bytes(bytes(data))

    rejected = safe_extract_zip(archive, tmp_path / "dest")
    assert [r.name for r in rejected] == ["big.jpg"]
    assert rejected[0].reason.startswith("corrupt zip entry")
    assert not (tmp_path / "dest/big.jpg").exists()
    assert (tmp_path / "dest/fine.jpg").read_bytes() == jpeg()


def test_running_byte_cap_stops_extraction_even_if_the_declared_sizes_fooled_the_precheck(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ingest, "_check_zip_limits", lambda *args: None)
    archive = write_zip(tmp_path / "big.zip", {"a.jpg": b"x" * 600, "b.jpg": b"y" * 600})
    with pytest.raises(ValueError, match="zip entry 'b.jpg' unpacks past the total size limit"):
        safe_extract_zip(archive, tmp_path / "dest", ZipLimits(max_total_bytes=1000))
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["a.jpg"]  # no partial b.jpg


def test_not_a_zip_is_a_clear_error(tmp_path):
    fake = write_files(tmp_path, {"fake.zip": b"not a zip"}) / "fake.zip"
    with pytest.raises(ValueError, match="is not a readable zip archive"):
        safe_extract_zip(fake, tmp_path / "dest")


# --------------------------------------------------------------------------- load_dataset


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
    root = write_files(tmp_path / "d", {
        "train/ cat /c.jpg": jpeg(),
        "test/cat/t1.jpg": jpeg(),
        f"test/{DISTRACTOR}/t2.jpg": jpeg(),
    })
    dataset = load_dataset(root)
    assert dataset.has_test_truth
    assert {i.id: i.label for i in dataset.items} == {"c.jpg": "cat", "t1.jpg": "cat", "t2.jpg": DISTRACTOR}


def test_mixed_test_folder_has_no_test_truth(tmp_path):
    root = write_files(tmp_path / "d", {"train/cat/c.jpg": jpeg(), "test/cat/t1.jpg": jpeg(), "test/t2.jpg": jpeg()})
    assert not load_dataset(root).has_test_truth


def test_duplicate_file_names_get_unique_deterministic_ids(tmp_path):
    root = write_files(tmp_path / "d", {
        "train/dog/a.jpg": jpeg(),
        "train/cat/a.jpg": jpeg(),
        "test/a.jpg": jpeg(),
        "test/b.jpg": jpeg(),
    })
    ids = [item.id for item in load_dataset(root).items]
    assert ids == ["a.jpg", "train/dog/a.jpg", "test/a.jpg", "b.jpg"]
    assert ids == [item.id for item in load_dataset(root).items]


def test_unicode_and_space_names(tmp_path):
    root = write_files(tmp_path / "jeu de données", {
        "train/pão de queijo/фото 1.jpg": jpeg(),
        "test/テスト 画像.png": encode(Image.new("RGB", (4, 4))),
    })
    dataset = load_dataset(root)
    assert dataset.name == "jeu de données"
    assert [(i.id, i.label) for i in dataset.items] == [
        ("фото 1.jpg", "pão de queijo"),
        ("テスト 画像.png", None),
    ]


def test_os_junk_is_ignored_and_other_files_are_rejected(tmp_path, small_layout):
    root = write_files(tmp_path / "d", {
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
    })
    dataset = load_dataset(root)
    assert len(dataset.items) == len(small_layout)
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert set(reasons) == {"train/cat/notes.txt", "train/stray.jpg", f"train/{DISTRACTOR}/odd.jpg", "test/drawing.svg"}
    assert reasons["train/cat/notes.txt"].startswith("not an image file type (.txt); accepted: .bmp")
    assert "outside a label folder" in reasons["train/stray.jpg"]
    assert "cannot be a train class" in reasons[f"train/{DISTRACTOR}/odd.jpg"]


def test_empty_train_split_is_a_clear_error(tmp_path):
    root = write_files(tmp_path / "d", {"train/cat/bad.jpg": b"", "test/t.jpg": jpeg()})
    with pytest.raises(ValueError, match=r"train split of .* is empty.*1 rejected, e.g. train/cat/bad.jpg: empty file"):
        load_dataset(root)


def test_unknown_layout_and_missing_source_are_clear_errors(tmp_path):
    root = write_files(tmp_path / "d", {"images/a.jpg": jpeg()})
    with pytest.raises(ValueError, match="no dataset layout .* found images"):
        load_dataset(root)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("wrapper", ["", "my-dataset/"], ids=["flat", "one top folder"])
def test_zip_of_folder_layout(tmp_path, small_layout, wrapper):
    archive = write_zip(tmp_path / "pets.zip", {wrapper + name: data for name, data in small_layout.items()})
    work_dir = tmp_path / "work"
    dataset = load_dataset(archive, work_dir=work_dir)
    assert dataset.name == "pets"
    assert [i.id for i in dataset.items] == ["c1.jpg", "c2.jpg", "d1.jpg", "t1.jpg", "t2.jpg"]
    assert all(item.path.is_relative_to(work_dir.resolve()) for item in dataset.items)


def test_a_zip_is_unpacked_once_and_reused_until_its_content_changes(tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", small_layout)
    work_dir = tmp_path / "work"
    first = load_dataset(archive, work_dir=work_dir)
    unpacked = sorted(path.name for path in work_dir.iterdir())
    (folder,) = {item.path.relative_to(work_dir.resolve()).parts[0] for item in first.items}
    assert unpacked == [folder, f"{folder}.refused.json"]  # no staging folder left behind

    edited = work_dir / folder / "train" / "cat" / "c1.jpg"
    edited.write_bytes(jpeg(BLUE))  # unpacking again would overwrite this
    again = load_dataset(archive, work_dir=work_dir)
    assert edited.read_bytes() == jpeg(BLUE)
    assert [item.path for item in again.items] == [item.path for item in first.items]
    assert sorted(path.name for path in work_dir.iterdir()) == unpacked

    write_zip(archive, {**small_layout, "train/dog/d2.jpg": jpeg(BLUE)})
    changed = load_dataset(archive, work_dir=work_dir)
    assert len(changed.items) == len(first.items) + 1
    assert len(list(work_dir.glob("pets-*.refused.json"))) == 2


def test_a_folder_left_without_its_record_is_unpacked_again(tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", {**small_layout, "../evil.jpg": jpeg()})
    work_dir = tmp_path / "work"
    first = load_dataset(archive, work_dir=work_dir)
    (record,) = work_dir.glob("*.refused.json")
    record.unlink()  # as if the run had died between unpacking and writing the record
    stray = first.items[0].path.parent / "stray.jpg"
    stray.write_bytes(jpeg())
    again = load_dataset(archive, work_dir=work_dir)
    assert not stray.exists() and record.is_file()
    assert [r.name for r in again.rejected] == [r.name for r in first.rejected] == ["../evil.jpg"]


def test_zips_unpack_into_the_workspace_home_by_default(workspace, tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", small_layout)
    dataset = load_dataset(archive)
    assert all(item.path.is_relative_to((workspace / "unpacked").resolve()) for item in dataset.items)


def test_zip_rejections_join_the_dataset_and_the_rest_loads(tmp_path, small_layout):
    archive = write_zip(tmp_path / "z.zip", {**small_layout, "../evil.jpg": jpeg(), "train/cat/x.zip": b"PK"})
    dataset = load_dataset(archive, work_dir=tmp_path / "work")
    assert len(dataset.items) == len(small_layout)
    assert {r.name for r in dataset.rejected} == {"../evil.jpg", "train/cat/x.zip"}


def test_csv_layout_with_test_csv_and_extra_columns(tmp_path):
    root = write_files(tmp_path / "kaggle", {
        "images/a.jpg": jpeg(), "images/b.jpg": jpeg(), "images/t1.jpg": jpeg(), "images/t2.jpg": jpeg(),
        "train.csv": b"image,label,notes\nimages/a.jpg, cat ,x\nb.jpg,dog,found in images/\n"
                     b"images/missing.jpg,cat,\n../outside.jpg,cat,\n\n",
        "test.csv": b"Image,Label\nimages/t1.jpg,cat\nimages/t2.jpg,-1\n",
    })
    dataset = load_dataset(root)
    assert [(i.split, i.id, i.label) for i in dataset.items] == [
        (TRAIN, "a.jpg", "cat"), (TRAIN, "b.jpg", "dog"), (TEST, "t1.jpg", "cat"), (TEST, "t2.jpg", DISTRACTOR),
    ]
    assert dataset.has_test_truth
    reasons = {r.name: r.reason for r in dataset.rejected}
    assert reasons == {
        "images/missing.jpg": "train.csv row 4: no such file",
        "../outside.jpg": "train.csv row 5: path points outside the dataset folder",
    }
    assert load_dataset(root / "train.csv").items == dataset.items


def test_csv_without_test_csv_uses_the_test_folder(tmp_path):
    root = write_files(tmp_path / "d", {
        "images/a.jpg": jpeg(), "test/t.jpg": jpeg(), "train.csv": b"image,label\nimages/a.jpg,cat\n",
    })
    assert [(i.split, i.id) for i in load_dataset(root).items] == [(TRAIN, "a.jpg"), (TEST, "t.jpg")]


def test_csv_empty_labels_are_rejected_rows(tmp_path):
    root = write_files(tmp_path / "d", {
        "images/a.jpg": jpeg(), "images/b.jpg": jpeg(),
        "train.csv": b"image,label\nimages/a.jpg,cat\nimages/b.jpg,   \n,cat\n",
    })
    dataset = load_dataset(root)
    assert [i.id for i in dataset.items] == ["a.jpg"]
    assert [(r.name, r.reason) for r in dataset.rejected] == [
        ("images/b.jpg", "empty label in train.csv row 3"),
        ("train.csv row 4", "empty image path"),
    ]


def test_csv_missing_columns_names_found_and_required(tmp_path):
    root = write_files(tmp_path / "d", {"images/a.jpg": jpeg(), "train.csv": b"image,path\nimages/a.jpg,x\n"})
    expected = r"train.csv is missing column\(s\) label: found image, path; required: image, label"
    with pytest.raises(ValueError, match=expected):
        load_dataset(root)
    (root / "train.csv").write_text("image,label\nimages/a.jpg,cat\n")
    (root / "test.csv").write_text("file\nimages/a.jpg\n")
    with pytest.raises(ValueError, match=r"test.csv is missing column\(s\) image: found file"):
        load_dataset(root)


def test_image_extensions_cover_common_formats():
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- Parquet embeddings


def make_embeddings(n: int = 4, dim: int = 3, model: str = "test/model") -> Embeddings:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Embeddings(
        ids=np.array([f"img{i}.jpg" for i in range(n)]),
        splits=np.array([TRAIN, TRAIN, TEST, TEST][:n]),
        labels=np.array(["cat", "dog", DISTRACTOR, None][:n], dtype=object),
        vectors=vectors,
        model=model,
    )


def write_raw_parquet(path: Path, columns: dict, metadata: dict | None = None) -> Path:
    table = pa.table(columns)
    pq.write_table(table.replace_schema_metadata(metadata) if metadata else table, path)
    return path


def test_parquet_round_trip_keeps_everything(tmp_path):
    original = make_embeddings()
    write_embeddings(tmp_path / "e.parquet", original)
    loaded = read_embeddings(tmp_path / "e.parquet")
    assert loaded.ids.tolist() == original.ids.tolist()
    assert loaded.splits.tolist() == original.splits.tolist()
    assert loaded.labels.tolist() == ["cat", "dog", DISTRACTOR, None]
    assert loaded.model == "test/model" and loaded.vectors.dtype == np.float32
    np.testing.assert_allclose(loaded.vectors, original.vectors, atol=1e-6)
    schema = pq.read_schema(tmp_path / "e.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert schema.metadata[MODEL_METADATA_KEY] == b"test/model"


def test_parquet_without_model_metadata_reads_unknown_and_renormalises(tmp_path):
    path = write_raw_parquet(tmp_path / "raw.parquet", {
        "id": ["a", "b"], "split": [TRAIN, TEST], "label": ["cat", None], "embedding": [[3.0, 4.0], [0.0, 2.0]],
    })
    loaded = read_embeddings(path)
    assert loaded.model == "unknown"
    np.testing.assert_allclose(loaded.vectors, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)


def test_parquet_missing_columns_are_named(tmp_path):
    path = write_raw_parquet(tmp_path / "m.parquet", {"id": ["a"], "vector": [[1.0]]})
    with pytest.raises(ValueError, match="missing column\\(s\\) split, label, embedding: found id, vector"):
        read_embeddings(path)


def test_parquet_bad_split_values_are_named(tmp_path):
    path = write_raw_parquet(tmp_path / "s.parquet", {
        "id": ["a", "b"], "split": [TRAIN, "val"], "label": ["x", "y"], "embedding": [[1.0], [1.0]],
    })
    with pytest.raises(ValueError, match="split column has value\\(s\\) 'val'; allowed: train, test"):
        read_embeddings(path)


def test_parquet_ragged_dimensions_are_an_error(tmp_path):
    path = write_raw_parquet(tmp_path / "r.parquet", {
        "id": ["a", "b"], "split": [TRAIN, TEST], "label": ["x", None], "embedding": [[1.0, 0.0], [1.0, 0.0, 0.0]],
    })
    with pytest.raises(ValueError, match="embeddings have different lengths \\(2, 3\\)"):
        read_embeddings(path)


def test_parquet_unusable_rows_are_dropped_and_reported(tmp_path):
    path = write_raw_parquet(tmp_path / "n.parquet", {
        "id": ["good", "nan", "inf", "zero", "none", "good"],
        "split": [TRAIN] * 6,
        "label": ["x"] * 6,
        "embedding": [[1.0, 1.0], [float("nan"), 1.0], [float("inf"), 0.0], [0.0, 0.0], None, [2.0, 0.0]],
    })
    emb, dropped = read_embeddings_checked(path)
    assert emb.ids.tolist() == ["good"]
    assert [(r.name, r.reason) for r in dropped] == [
        ("nan", "embedding has NaN or infinite values"),
        ("inf", "embedding has NaN or infinite values"),
        ("zero", "embedding is all zeros (norm 0)"),
        ("none", "missing embedding"),
        ("good", "id repeated (first at row 0)"),
    ]
    with pytest.warns(UserWarning, match="dropped row\\(s\\) with unusable embeddings: 5 rejected"):
        assert read_embeddings(path).ids.tolist() == ["good"]


def test_not_parquet_is_a_clear_error(tmp_path):
    path = write_files(tmp_path, {"x.parquet": b"nope"}) / "x.parquet"
    with pytest.raises(ValueError, match="is not a readable Parquet file"):
        read_embeddings(path)


labels_strategy = st.one_of(st.none(), st.text(max_size=12))


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([TRAIN, TEST]), labels_strategy), min_size=1, max_size=12
    ),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
    model=st.text(max_size=20),
)
def test_parquet_round_trip_property(tmp_path_factory, rows, dim, seed, model):
    vectors = np.random.default_rng(seed).normal(size=(len(rows), dim)).astype(np.float32) + 1e-3
    original = Embeddings(
        ids=np.array([f"id{i}" for i in range(len(rows))]),
        splits=np.array([split for split, _ in rows]),
        labels=np.array([label for _, label in rows], dtype=object),
        vectors=vectors,
        model=model,
    )
    path = tmp_path_factory.mktemp("prop") / "e.parquet"
    write_embeddings(path, original)
    loaded, dropped = read_embeddings_checked(path)
    assert dropped == []
    assert loaded.labels.tolist() == original.labels.tolist()
    assert loaded.splits.tolist() == original.splits.tolist()
    assert loaded.model == model
    np.testing.assert_allclose(np.linalg.norm(loaded.vectors, axis=1), 1.0, atol=1e-5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.vectors, unit, atol=1e-5)


# --------------------------------------------------------------------------- texts and prompts


def test_load_texts_from_txt_strips_and_skips_blank_lines(tmp_path):
    path = write_files(tmp_path, {"t.txt": "\ufeff a red circle \n\n  \nblue square\n".encode()}) / "t.txt"
    assert load_texts(path) == ["a red circle", "blue square"]


@pytest.mark.parametrize(
    "content, column, expected",
    [
        (b"caption\na cat\n\na dog\n", None, ["a cat", "a dog"]),
        (b"id,prompt\n1,a cat\n2,a dog\n", None, ["a cat", "a dog"]),
        (b"id,words\n1,a cat\n", "Words", ["a cat"]),
    ],
    ids=["only column", "prompt column", "named column"],
)
def test_load_texts_from_csv(tmp_path, content, column, expected):
    path = write_files(tmp_path, {"t.csv": content}) / "t.csv"
    assert load_texts(path, column=column) == expected


def test_load_texts_bad_inputs(tmp_path):
    files = write_files(tmp_path, {"two.csv": b"a,b\n1,2\n", "blank.txt": b"\n \n", "t.json": b"[]"})
    with pytest.raises(ValueError, match="has columns a, b; pass column= one of them or name it text"):
        load_texts(files / "two.csv")
    with pytest.raises(ValueError, match="has no column 'c'; columns: a, b"):
        load_texts(files / "two.csv", column="c")
    with pytest.raises(ValueError, match="holds no non-empty texts"):
        load_texts(files / "blank.txt")
    with pytest.raises(ValueError, match="unsupported text file t.json"):
        load_texts(files / "t.json")


def test_prompts_for_requires_the_label_placeholder():
    assert prompts_for(["red circle", DISTRACTOR]) == ["a photo of a red circle", "a photo of a -1"]
    with pytest.raises(ValueError, match="template 'a photo' must contain \\{label\\}"):
        prompts_for(["cat"], template="a photo")


@given(
    labels=st.lists(st.text(max_size=15)),
    prefix=st.text(max_size=10),
    suffix=st.text(max_size=10),
)
def test_prompts_for_property(labels, prefix, suffix):
    assume((prefix + "{label}" + suffix).count("{label}") == 1)
    prompts = prompts_for(labels, template=prefix + "{label}" + suffix)
    assert prompts == [prefix + label + suffix for label in labels]


def test_zip_of_csv_layout_inside_a_top_folder(tmp_path):
    archive = write_zip(tmp_path / "kaggle.zip", {
        "kaggle/images/a.jpg": jpeg(), "kaggle/test/t.jpg": jpeg(), "kaggle/train.csv": b"image,label\na.jpg,cat\n",
    })
    dataset = load_dataset(archive, work_dir=tmp_path / "work")
    assert dataset.name == "kaggle"
    assert [(i.split, i.id, i.label) for i in dataset.items] == [(TRAIN, "a.jpg", "cat"), (TEST, "t.jpg", None)]
