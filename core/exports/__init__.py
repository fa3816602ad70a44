"""Stage 10, sharing: exports of an analysis to the tools people already use: FiftyOne, Embedding Atlas and TensorBoard's projector."""

from __future__ import annotations

import tempfile
from pathlib import Path

from core.exports.items import Exported, ExportItems, zipped
from core.progress import Watch


def exported_zip(
    export_format: str, items: ExportItems, name: str, watch: Watch = Watch(), **options
) -> bytes:
    """The export written into a temporary folder and handed back as one zip (the dashboard's download).

    A zip leaves this machine, so a FiftyOne export in it is portable: its images go inside the zip
    and the samples name them there, never where they lie on the server.
    """
    if export_format == "fiftyone":
        options = {**options, "portable": True}
    with tempfile.TemporaryDirectory(prefix="retrieval-lab-export-") as folder:
        return zipped(export(export_format, items, Path(folder), name, watch, **options))


EXPORT_FORMATS = ("fiftyone", "atlas", "tensorboard")
FORMAT_NAMES = {
    "fiftyone": "FiftyOne",
    "atlas": "Embedding Atlas",
    "tensorboard": "TensorBoard projector",
}
# How an unzipped export opens, for a download's help.
OPENING = {
    "fiftyone": "Unzip to a folder, then in Python: `fo.Dataset.from_dir(folder, dataset_type=fo.types.LegacyFiftyOneDataset)`. "
    "The images are in the zip (data/), so the folder opens on any machine.",
    "atlas": "Unzip, then: `embedding-atlas atlas.parquet --x x --y y --text text --neighbors neighbors --image image` "
    "(leave out `--image image` for a dataset without images).",
    "tensorboard": "Unzip to a folder, then: `tensorboard --logdir folder` and open the Projector tab.",
}


def _formats() -> dict:
    """Each format's writer and the names of the files it writes into its folder."""
    # Imported when first used: the command line reads EXPORT_FORMATS at start-up.
    from core.exports import atlas, fiftyone, tensorboard

    return {
        "fiftyone": (fiftyone.write_fiftyone, fiftyone.FILES),
        "atlas": (atlas.write_atlas, atlas.FILES),
        "tensorboard": (tensorboard.write_tensorboard, tensorboard.FILES),
    }


def _format(export_format: str) -> tuple:
    formats = _formats()
    if export_format not in formats:
        raise ValueError(
            f"export format {export_format!r} is not known; use one of {', '.join(EXPORT_FORMATS)}"
        )
    return formats[export_format]


def written_files(export_format: str) -> tuple[str, ...]:
    """The names of the files an export in `export_format` writes into its folder, to check them before it runs."""
    return _format(export_format)[1]


def export(
    export_format: str,
    items: ExportItems,
    folder: Path,
    name: str,
    watch: Watch = Watch(),
    **options,
) -> Exported:
    """Write `items` into `folder` (made if missing) in `export_format`'s own layout, replacing files of the same names.

    `name` names the dataset in the tool; `options` go to the format's writer (atlas: the projection to draw).
    """
    writer, _ = _format(export_format)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; give a folder to write the export into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot make the folder {folder}: {error.strerror}") from None
    return writer(items, folder, name=name, watch=watch, **options)
