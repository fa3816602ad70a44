"""FiftyOne export: a LegacyFiftyOneDataset folder (metadata.json and samples.json) of samples with labels, predictions and embeddings."""

from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path

import numpy as np

from core.exports.items import Exported, ExportItems
from core.io.files import replaced_atomically
from core.io.images import IMAGE_EXTENSIONS
from core.progress import Watch

SAMPLES_FILE = "samples.json"
METADATA_FILE = "metadata.json"
# Every file the export may write into its folder.
FILES = (METADATA_FILE, SAMPLES_FILE)
# The folder of a portable export's images, named as FiftyOne's own exporter names it.
MEDIA_FOLDER = "data"
# Samples serialised between two progress reports.
_SAMPLES_PER_STEP = 1024
STAGE = "writing FiftyOne samples"


def write_fiftyone(
    items: ExportItems, folder: Path, name: str, watch: Watch = Watch(), portable: bool = False
) -> Exported:
    """Samples FiftyOne imports with `fo.Dataset.from_dir(folder, dataset_type=fo.types.LegacyFiftyOneDataset)`.

    Each sample points at its image where it lies, by its absolute path (nothing is copied: a folder
    on the user's own machine), or when `portable` by a path inside the export (data/<row><suffix>, as
    FiftyOne's own exporter lays images out), the image left where it lies and listed in the result's
    `media` for a zip to carry. Each carries `split` (also its tag), `item_id`, `ground_truth` (a
    Classification), and for test items `predictions` (the k labels as Classifications, each label's
    best cosine to train as its confidence, none for "-1"), `distractor` and `distractor_score`;
    `embedding` is the vector in FiftyOne's own array encoding.
    """
    check_images(items.image_paths)
    with_images = [row for row, path in enumerate(items.image_paths) if path is not None]
    media_names = {row: _media_name(items, row) for row in with_images} if portable else {}
    notes = []
    if len(with_images) < len(items):
        notes.append(f"{len(items) - len(with_images)} items without an image file are left out")
    samples = folder / SAMPLES_FILE
    with replaced_atomically(samples) as partial, open(partial, "w", encoding="utf-8") as handle:
        handle.write('{"samples": [\n')
        for done, row in enumerate(with_images):
            if done % _SAMPLES_PER_STEP == 0:
                watch.step(done, len(with_images), STAGE)
            sample = _sample(items, row, media_names.get(row))
            handle.write(("" if done == 0 else ",\n") + json.dumps(sample, ensure_ascii=False))
        handle.write("\n]}\n")
    watch.step(len(with_images), len(with_images), STAGE)
    metadata = folder / METADATA_FILE
    # No "version" key: FiftyOne reads a metadata.json with one as its newer, database-dump format.
    info = {
        "source": "Retrieval Lab",
        "model": items.model,
        "threshold": items.threshold,
        "rule": items.rule,
        "placement": items.placement,
        "k": items.k,
    }
    with replaced_atomically(metadata) as partial:
        partial.write_text(
            json.dumps({"name": name, "media_type": "image", "info": info}, ensure_ascii=False),
            encoding="utf-8",
        )
    # Python, as FiftyOne's own documentation opens a dataset folder.
    code = (
        "import fiftyone as fo\n"
        f"dataset = fo.Dataset.from_dir({str(folder.resolve())!r}, dataset_type=fo.types.LegacyFiftyOneDataset)\n"
        "fo.launch_app(dataset).wait()"
    )
    media = {name: Path(items.image_paths[row]) for row, name in media_names.items()}
    return Exported(folder, [metadata, samples], code, notes, media)


def check_images(image_paths) -> None:
    """Refuse a source without image files (an embeddings Parquet), before anything is computed for it."""
    if not any(path is not None for path in image_paths):
        raise ValueError(
            "a FiftyOne dataset is made of image files and this source has none (an embeddings Parquet carries "
            "vectors only): export the image dataset itself, or use the atlas or tensorboard format"
        )


def _media_name(items: ExportItems, row: int) -> str:
    """Where a portable export keeps the image of `row`: named by the row, so no user text becomes a path."""
    suffix = Path(items.image_paths[row]).suffix.lower()
    return f"{MEDIA_FOLDER}/{row}{suffix if suffix in IMAGE_EXTENSIONS else ''}"


def _sample(items: ExportItems, row: int, media_name: str | None) -> dict:
    """The sample of `row`, its image named by `media_name` inside the export, else by where it lies."""
    sample = {
        "filepath": media_name or str(Path(items.image_paths[row]).resolve()),
        "tags": [str(items.splits[row])],
        "split": str(items.splits[row]),
        "item_id": str(items.ids[row]),
        "embedding": {"$binary": {"base64": serialized_array(items.vectors[row]), "subType": "00"}},
    }
    if items.labels[row] is not None:
        sample["ground_truth"] = _classification(items.labels[row])
    if items.predictions[row] is not None:
        sample["predictions"] = {
            "_cls": "Classifications",
            "classifications": [
                _classification(label, confidence)
                for label, confidence in zip(items.predictions[row], items.label_similarities[row])
            ],
        }
        sample["distractor"] = items.flagged[row]
        sample["distractor_score"] = items.scores[row]
    for name, values in items.audit_columns.items():
        sample[name] = values[row]
    return sample


def _classification(label: str, confidence: float | None = None) -> dict:
    classification = {"_cls": "Classification", "label": str(label)}
    if confidence is not None:
        classification["confidence"] = confidence
    return classification


def serialized_array(vector: np.ndarray) -> str:
    """`vector` as FiftyOne stores arrays (fiftyone.core.utils.serialize_numpy_array): .npy bytes, zlib, base64."""
    with io.BytesIO() as buffer:
        np.save(buffer, np.asarray(vector, np.float32), allow_pickle=False)
        return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")
