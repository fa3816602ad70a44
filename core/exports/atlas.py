"""Embedding Atlas export: one Parquet with the 2-D map, captions, thumbnails and each item's nearest train images."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.display import ZERO_WIDTH_SPACE
from core.exports.items import Exported, ExportItems, thumbnails
from core.io.files import replaced_atomically
from core.io.parquet import embeddings_table
from core.maps.projection import Projection
from core.progress import Watch
from core.records import Embeddings
from core.search.index import VectorIndex

ATLAS_FILE = "atlas.parquet"
# Every file the export may write into its folder.
FILES = (ATLAS_FILE,)
# Thumbnails as Embedding Atlas shows them in its tooltips and lists: JPEG, at most this many pixels a side.
THUMBNAIL_EDGE = 96
THUMBNAIL_QUALITY = 85
# Rows per Parquet row group: thumbnails of one group are held in memory at a time.
_ROWS_PER_GROUP = 2048
# The Atlas command-line options naming this file's columns.
COLUMN_OPTIONS = {"x": "x", "y": "y", "text": "text", "neighbors": "neighbors"}
NEIGHBOUR_STAGE = "searching each train image's nearest train images"
# Atlas shows a text value as a link when it starts with http(s)://, as an image or a sound when it is a
# data: URL or 64+ characters of base64 (its viewer's renderer_utils.ts valueKind): such a caption starts
# with a zero-width space, so it stays text.
_SHOWN_AS_MEDIA = re.compile(r"(?i)^(?:https?://|data:)|^[A-Za-z0-9+/]{64,}={0,2}$")


# The audit's columns (core.audit.findings.EXPORT_COLUMNS), typed: an id, a label, a group number.
AUDIT_TYPES = {
    "near_duplicate_of": pa.string(),
    "suggested_label": pa.string(),
    "duplicate_group": pa.int64(),
}


def write_atlas(
    items: ExportItems, folder: Path, name: str, projection: Projection, watch: Watch = Watch()
) -> Exported:
    """atlas.parquet: the embeddings Parquet's columns (id, split, label, embedding) and the ones Atlas reads.

    x and y are `projection`'s coordinates (core.maps.projection, as the Map page draws it); text a
    caption, the one column made safe to show (as_text); neighbors, as Atlas documents it, {"ids": row
    numbers, "distances": cosine distances} of each item's nearest train images (for a train image,
    the others); image a JPEG thumbnail {"bytes", "path"} when the items have images. Test rows also
    get prediction (the first label), predictions (the k labels, a list), flagged and
    distractor_score. Ids and labels are written exactly as the items hold them.
    """
    xy = np.vstack([projection.train_xy, projection.test_xy])
    if len(xy) != len(items):
        raise ValueError(
            f"the map has {len(xy)} points for {len(items)} items; project this analysis's train and test vectors"
        )
    neighbour_ids, neighbour_distances, notes = _neighbours(items, watch)
    options = dict(COLUMN_OPTIONS)
    if neighbour_ids is None:
        del options["neighbors"]
    if items.has_images:
        options["image"] = "image"
    path = folder / ATLAS_FILE
    with replaced_atomically(path) as partial:
        writer = None
        try:
            for start in range(0, len(items), _ROWS_PER_GROUP):
                rows = range(start, min(start + _ROWS_PER_GROUP, len(items)))
                table = _table(items, rows, xy, neighbour_ids, neighbour_distances, watch)
                writer = writer or pq.ParquetWriter(partial, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    flags = " ".join(f"--{option} {column}" for option, column in options.items())
    return Exported(
        folder,
        [path],
        f"embedding-atlas {shlex.quote(str(path))} {flags}",
        [*projection.notes, *notes],
    )


def _table(items, rows: range, xy, neighbour_ids, neighbour_distances, watch: Watch) -> pa.Table:
    # The values are exact, so the project and Atlas's own filters read the classes they were; only
    # the caption Atlas shows (text) is guarded against being shown as a link or media.
    selected = np.arange(rows.start, rows.stop)
    table = embeddings_table(
        Embeddings(
            items.ids[selected],
            items.splits[selected],
            items.labels[selected],
            items.vectors[selected],
            items.model,
        )
    )
    predictions = [items.predictions[row] for row in rows]
    columns = {
        "x": pa.array(xy[selected, 0], pa.float32()),
        "y": pa.array(xy[selected, 1], pa.float32()),
        "text": pa.array([as_text(items.caption(row)) for row in rows], pa.string()),
        "prediction": pa.array(
            [None if row is None else row[0] for row in predictions], pa.string()
        ),
        "predictions": pa.array(predictions, pa.list_(pa.string())),
        "flagged": pa.array([items.flagged[row] for row in rows], pa.bool_()),
        "distractor_score": pa.array([items.scores[row] for row in rows], pa.float32()),
        **{
            name: pa.array([values[row] for row in rows], AUDIT_TYPES[name])
            for name, values in items.audit_columns.items()
        },
    }
    if neighbour_ids is not None:
        columns["neighbors"] = pa.array(
            [
                {"ids": neighbour_ids[row].tolist(), "distances": neighbour_distances[row].tolist()}
                for row in rows
            ],
            pa.struct([("ids", pa.list_(pa.int64())), ("distances", pa.list_(pa.float32()))]),
        )
    if items.has_images:
        step = Watch(
            lambda done, total, stage: watch.step(rows.start + done, len(items), stage), watch.stop
        )
        columns["image"] = pa.array(
            [
                None if image is None else {"bytes": _jpeg(image), "path": None}
                for image in thumbnails(
                    items.image_paths[rows.start : rows.stop], THUMBNAIL_EDGE, step
                )
            ],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    for column, values in columns.items():
        table = table.append_column(column, values)
    return table


def as_text(value: str) -> str:
    """`value` as Atlas shows text: with a zero-width space first when Atlas would show it as a link or media."""
    return ZERO_WIDTH_SPACE + value if _SHOWN_AS_MEDIA.search(value) else value


def _jpeg(image) -> bytes:
    with io.BytesIO() as buffer:
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()


def _neighbours(items: ExportItems, watch: Watch):
    """Row numbers and cosine distances of every item's nearest train images, one width for all (Atlas stacks them).

    A test item's are the analysis's; a train image's are searched among the other train images.
    None when train has a single image, which has no other.
    """
    width = min(items.test_neighbours.k, items.n_train - 1)
    if width < 1:
        return None, None, ["no neighbours column: train has a single image"]
    train = items.vectors[: items.n_train]
    watch.step(0, 1, NEIGHBOUR_STAGE)
    found = VectorIndex(train).search(train, width + 1)
    # Each image's own row is dropped; where ties pushed it out of the result, the last neighbour is.
    others = found.indices != np.arange(items.n_train)[:, None]
    others[others.all(axis=1), -1] = False
    ids = np.vstack(
        [found.indices[others].reshape(-1, width), items.test_neighbours.indices[:, :width]]
    )
    similarities = np.vstack(
        [
            found.similarities[others].reshape(-1, width),
            items.test_neighbours.similarities[:, :width],
        ]
    )
    return ids, 1.0 - similarities, []
