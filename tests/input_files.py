"""Builders of input files for the core.io tests: images, hostile image bytes, folders, zips, Parquet."""

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
from PIL import Image

from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


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


class Upload(io.BytesIO):
    """What Streamlit hands over for an uploaded file (its UploadedFile is a BytesIO): a name and its bytes."""

    def __init__(self, name: str, data: bytes):
        super().__init__(data)
        self.name = name


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def write_zip(
    path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None
) -> Path:
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


class StandInModel:
    """What a stand-in for a model in a test shares with the Embedder protocol beside its own
    identity, dim and embed calls: the CPU, no precision to check, the CPU's batch size."""

    supports_text = False
    draft_size = None
    device = "cpu"
    precision = None
    precision_note = None
    awaits_precision_check = False

    def default_batch_size(self) -> int:
        from core.embedding.config import CPU_BATCH_SIZE

        return CPU_BATCH_SIZE

    def use_threads(self, threads: int) -> None:
        pass
