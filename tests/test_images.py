"""Tests for core.io.images: decoding, EXIF orientation, colour modes and refusals with reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from input_files import (
    BLUE,
    EXPECTED_DISPLAY,
    RED,
    SVG,
    WHITE,
    bomb_png,
    encode,
    jpeg,
    pixels,
    write_files,
)
from PIL import Image

from core.io.images import IMAGE_EXTENSIONS, ImageRejected, check_image_file, load_image
from core.io.layouts import load_dataset

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

    root = write_files(
        tmp_path / "data", {"train/cat/good.jpg": jpeg(), "train/cat/bad.jpg": content}
    )
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
    with pytest.raises(
        ImageRejected,
        match=r"decompression bomb: 10,000 pixels \(100x100\) exceeds the limit of 6,000",
    ):
        load_image(encode(Image.new("RGB", (100, 100))))
    assert load_image(encode(Image.new("RGB", (50, 50)))).size == (50, 50)


def test_unreadable_path_is_rejected_with_a_reason(tmp_path):
    with pytest.raises(ImageRejected, match="cannot read file"):
        load_image(tmp_path / "missing.jpg")


def test_check_image_file_reports_reason_or_none(tmp_path):
    files = write_files(
        tmp_path, {"good.png": encode(Image.new("RGB", (4, 4))), "bomb.png": bomb_png()}
    )
    assert check_image_file(files / "good.png") is None
    assert check_image_file(files / "bomb.png").startswith("decompression bomb")


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


def test_image_extensions_cover_common_formats():
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= IMAGE_EXTENSIONS


def test_jfif_is_an_image_extension_pillow_reads(tmp_path):
    assert Image.registered_extensions()[".jfif"] == "JPEG" and ".jfif" in IMAGE_EXTENSIONS
    root = write_files(tmp_path / "d", {"train/cat/photo.jfif": jpeg()})
    assert [item.id for item in load_dataset(root).items] == ["photo.jfif"]
