"""Streamlit glue for showing things: escaping user text, thumbnails and image grids, long tables a page at a time."""

# Only light modules are imported here: the Data page and the sidebar must paint before torch,
# scikit-learn, FAISS or UMAP load.

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.display import count_text, inert
from core.io.images import IMAGE_EXTENSIONS, thumbnail_image
from core.io.layouts import load_dataset
from core.records import Dataset
from core.session.server import ActiveAnalysis
from core.session.workspace import DatasetEntry

THUMBNAIL_EDGE = 160
IMAGE_UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
TABLE_PAGE_ROWS = 500  # rows of a long table sent to the browser at a time


def plain(text) -> str:
    """Any text that came from a user or their data, made inert for Markdown (core.display.inert):
    ids, labels, file names, queries, dataset, model and workspace names, and error messages quoting them."""
    return inert(text)


# ── images ───────────────────────────────────────────────────────────────────


@st.cache_data(show_spinner="Reading the dataset…", max_entries=32)
def read_dataset(source: str) -> Dataset:
    return load_dataset(source)


def image_paths(entry: DatasetEntry) -> dict[str, Path]:
    """Image file of each item id; empty for Parquet sources, which carry vectors only."""
    if entry.kind == "parquet":
        return {}
    return {item.id: item.path for item in read_dataset(entry.source).items}


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, edge: int = THUMBNAIL_EDGE):
    """A small RGB copy of an image, or None when it cannot be read."""
    image = thumbnail_image(Path(path), edge)
    return None if image is None else np.asarray(image)


def image(current: ActiveAnalysis, item_id: str):
    """The thumbnail of an item of the active dataset; None for an item without an image file."""
    path = image_paths(current.entry).get(item_id)
    return None if path is None else thumbnail(str(path))


# ── widgets ──────────────────────────────────────────────────────────────────


def table_page(total: int, key: str) -> slice:
    """The rows of a long table to show: a page number box when it has more than one page."""
    pages = max(1, -(-total // TABLE_PAGE_ROWS))
    page = 1
    if pages > 1:
        page = st.number_input(
            f"Page (of {count_text(pages)}, {count_text(TABLE_PAGE_ROWS)} rows each)",
            1,
            pages,
            1,
            key=key,
        )
    return slice((page - 1) * TABLE_PAGE_ROWS, page * TABLE_PAGE_ROWS)


def image_grid(images: list, captions: list[str], per_row: int = 8) -> None:
    """Thumbnails in rows of `per_row`, each with its caption made inert; an item without an image (a Parquet
    row) is a card of its caption alone.

    Captions are plain text built from ids, labels and scores: this escapes them, callers do not."""
    for start in range(0, len(captions), per_row):
        for column, picture, caption in zip(
            st.columns(per_row), images[start : start + per_row], captions[start : start + per_row]
        ):
            with column:
                if picture is None:
                    st.container(border=True).markdown(plain(caption))
                else:
                    st.image(picture, caption=plain(caption), width="stretch")
