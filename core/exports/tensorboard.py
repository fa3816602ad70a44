"""TensorBoard projector export: vectors and metadata TSVs, a sprite of thumbnails and the projector_config.pbtxt naming them."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from core.exports.items import Exported, ExportItems, thumbnails
from core.io.files import replaced_atomically
from core.prediction.predict import submission_cell
from core.progress import Watch

CONFIG_FILE = "projector_config.pbtxt"  # the name TensorBoard looks for in a log folder
TENSORS_FILE = "tensors.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
# Every file the export may write into its folder.
FILES = (TENSORS_FILE, METADATA_FILE, SPRITE_FILE, CONFIG_FILE)
METADATA_COLUMNS = (
    "id",
    "split",
    "label",
    "prediction",
    "predictions",
    "flagged",
    "distractor_score",
)
# The projector refuses sprites over 8192 px a side; half of that keeps the PNG under 48 MB of pixels,
# which a browser loads at once, and still gives 35 px thumbnails at 13k items.
SPRITE_MAX_SIDE = 4096
SPRITE_MAX_IMAGE_EDGE = 64
# Below this many pixels a side a thumbnail shows nothing: the sprite is left out instead.
SPRITE_MIN_IMAGE_EDGE = 4
# Vectors written between two progress reports.
_ROWS_PER_STEP = 4096
STAGE = "writing TensorBoard vectors"
# Every character that ends a line for TensorBoard (Python's text files, the browser's split on
# "\n") or a field (tab) is written as an escape, and so is the backslash that starts one: each item
# stays one row of its columns and its text reads back exactly (README, "Open in other tools").
_ESCAPED = re.compile("[\\\\\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def write_tensorboard(
    items: ExportItems, folder: Path, name: str, watch: Watch = Watch()
) -> Exported:
    """A log folder TensorBoard's projector opens (`tensorboard --logdir folder`): one embedding of every item.

    tensors.tsv holds a vector per line; metadata.tsv a header row (id, split, label, prediction,
    predictions, flagged, distractor_score, then the audit's columns when the items carry them) and a
    row per item; sprite.png a grid of thumbnails when the items have images.
    """
    tensors, metadata, config = folder / TENSORS_FILE, folder / METADATA_FILE, folder / CONFIG_FILE
    with replaced_atomically(tensors) as partial, open(partial, "w", encoding="ascii") as handle:
        for start in range(0, len(items), _ROWS_PER_STEP):
            watch.step(start, len(items), STAGE)
            np.savetxt(
                handle, items.vectors[start : start + _ROWS_PER_STEP], fmt="%.6g", delimiter="\t"
            )
    watch.step(len(items), len(items), STAGE)
    with (
        replaced_atomically(metadata) as partial,
        open(partial, "w", encoding="utf-8", newline="\n") as handle,
    ):
        handle.write("\t".join((*METADATA_COLUMNS, *items.audit_columns)) + "\n")
        for row in range(len(items)):
            handle.write("\t".join(tsv_field(value) for value in _metadata_row(items, row)) + "\n")
    files, notes = [tensors, metadata], []
    sprite_lines = ""
    if items.has_images:
        cell = sprite_cell(len(items))
        if cell < SPRITE_MIN_IMAGE_EDGE:
            notes.append(
                f"no sprite: {len(items):,} thumbnails would be under {SPRITE_MIN_IMAGE_EDGE} px in {SPRITE_MAX_SIDE} px"
            )
        else:
            sprite = folder / SPRITE_FILE
            _write_sprite(sprite, items.image_paths, cell, watch)
            files.append(sprite)
            sprite_lines = (
                f'  sprite {{\n    image_path: "{SPRITE_FILE}"\n'
                f"    single_image_dim: {cell}\n    single_image_dim: {cell}\n  }}\n"
            )
    text = (
        "embeddings {\n"
        f"  tensor_name: {proto_string(f'{name} · {items.model}')}\n"
        f'  tensor_path: "{TENSORS_FILE}"\n'
        f'  metadata_path: "{METADATA_FILE}"\n'
        f"  tensor_shape: {len(items)}\n"
        f"  tensor_shape: {items.vectors.shape[1]}\n"
        f"{sprite_lines}"
        "}\n"
    )
    with replaced_atomically(config) as partial:
        partial.write_text(text, encoding="ascii")
    files.append(config)
    return Exported(
        folder,
        files,
        f"tensorboard --logdir {shlex.quote(str(folder))}  # then open the Projector tab",
        notes,
    )


def _metadata_row(items: ExportItems, row: int) -> list:
    predictions = items.predictions[row]
    return [
        items.ids[row],
        items.splits[row],
        items.labels[row],
        None if predictions is None else predictions[0],
        None if predictions is None else submission_cell(predictions),
        items.flagged[row],
        items.scores[row],
        *(values[row] for values in items.audit_columns.values()),
    ]


def tsv_field(value) -> str:
    r"""A metadata value as one TSV field: empty for None (the projector's missing value), a backslash, tab
    or line break as an escape (\\, \t, \n, \r, any other break \uXXXX)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    return _ESCAPED.sub(lambda found: _ESCAPES.get(found[0], f"\\u{ord(found[0]):04x}"), str(value))


def proto_string(text: str) -> str:
    """`text` as a quoted protobuf text-format string: printable ASCII as is, every other byte of its UTF-8 in octal."""
    escaped = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\{byte:03o}"
        for byte in text.encode("utf-8")
    )
    return f'"{escaped}"'


def sprite_cell(n_items: int) -> int:
    """Pixels a side of each thumbnail when `n_items` fill a square grid at most SPRITE_MAX_SIDE wide."""
    per_side = max(1, math.ceil(math.sqrt(n_items)))
    return min(SPRITE_MAX_IMAGE_EDGE, SPRITE_MAX_SIDE // per_side)


def _write_sprite(path: Path, image_paths: list[Path | None], cell: int, watch: Watch) -> None:
    """Thumbnails row by row, left to right, as the projector reads them; white where an item has no image."""
    per_side = max(1, math.ceil(math.sqrt(len(image_paths))))
    rows = math.ceil(len(image_paths) / per_side)
    sprite = Image.new("RGB", (per_side * cell, rows * cell), "white")
    for index, thumbnail in enumerate(thumbnails(image_paths, cell, watch)):
        if thumbnail is None:
            continue
        left = (index % per_side) * cell + (cell - thumbnail.width) // 2
        top = (index // per_side) * cell + (cell - thumbnail.height) // 2
        sprite.paste(thumbnail, (left, top))
    with replaced_atomically(path) as partial:
        sprite.save(partial, format="PNG")
