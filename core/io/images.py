"""Decoding user images safely into RGB: EXIF orientation, colour modes, and refusals with a reason."""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)

_SNIFF_BYTES = 512
_SVG_REASON = "not an image (looks like SVG/XML; only raster images are supported)"
_NOT_IMAGE_REASON = "not an image (the contents are not a raster format Pillow can read)"
# Pillow merely warns between one and two times the pixel limit; _open refuses those itself, without
# the process-wide warning filters that catch_warnings would swap under concurrent threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Everything a Pillow decoder raises on damaged data.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)

# Never decode a partial image silently: a truncated file must be rejected, not half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """An input that is not a usable raster image; `reason` is one line a person can act on."""

    def __init__(self, reason: str, name: str = "") -> None:
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason
        self.name = name


def load_image(source: Path | bytes, name: str = "", draft_size: int | None = None) -> Image.Image:
    """Decode `source` fully into an RGB image the way a person would see it.

    EXIF orientation is applied, transparency is composited on white, every other colour mode
    becomes RGB and animations give their first frame. Raises ImageRejected with a reason for
    empty, non-image, SVG, truncated, corrupt and decompression-bomb inputs. `draft_size` lets
    JPEGs decode at a reduced scale that is still at least that many pixels on each side.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive pixel count or None, got {draft_size}")
    name = name or _default_name(source)
    with _refusals(name), _open(source, name) as img:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img, name)


def thumbnail_image(path: Path, edge: int) -> Image.Image | None:
    """A copy of the image at `path` shrunk to fit `edge` pixels a side, or None when it cannot be read."""
    try:
        image = load_image(Path(path), draft_size=edge)
    except (ImageRejected, OSError):
        return None
    image.thumbnail((edge, edge))
    return image


def check_image_file(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None; reads the header only, never the pixels."""
    try:
        with _refusals(path.name), _open(path, path.name):
            return None
    except ImageRejected as exc:
        return exc.reason


def _default_name(source: Path | bytes) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else ""


@contextlib.contextmanager
def _refusals(name: str) -> Iterator[None]:
    """Turn Pillow's many failure modes into ImageRejected."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(_bomb_reason(exc), name) from None
    except UnidentifiedImageError:
        raise ImageRejected(_NOT_IMAGE_REASON, name) from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}", name) from None


def _bomb_reason(exc: Exception) -> str:
    # Pillow reports the pixel count only once it has refused, never the width and height.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"decompression bomb: {pixels} exceeds the limit of {Image.MAX_IMAGE_PIXELS:,}"


def _open(source: Path | bytes, name: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:_SNIFF_BYTES])
    else:
        try:
            with open(source, "rb") as handle:
                head = handle.read(_SNIFF_BYTES)
        except OSError as exc:
            raise ImageRejected(f"cannot read file: {exc.strerror or exc}", name) from None
    if not head:
        raise ImageRejected("empty file", name)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise ImageRejected(_SVG_REASON, name)
    img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    pixels = img.width * img.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise ImageRejected(
            f"decompression bomb: {pixels:,} pixels ({img.width}x{img.height}) exceeds the limit of "
            f"{Image.MAX_IMAGE_PIXELS:,}",
            name,
        )
    return img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if img.mode in ("I", "F"):
        return _grey_to_rgb(_stretch(np.asarray(img, dtype=np.float64)))
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageRejected(f"colour mode {img.mode} cannot be converted to RGB", name) from None


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the observed range onto 0..255: 32-bit and float images carry no fixed white level."""
    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    return (finite - low) * (255.0 / (high - low)) if high > low else np.zeros_like(finite)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
