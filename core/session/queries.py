"""What a user brings to query a dataset with: uploaded images and text files, embedded by the shared model under its lock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.embedding.cache import EmbeddingCache
from core.embedding.runner import embed_texts_cached
from core.io.files import bytes_digest
from core.io.images import ImageRejected, load_image
from core.io.texts import load_texts
from core.paths import safe_file_name
from core.records import Rejected
from core.session.datasets import NamedFile
from core.session.models import SharedModel
from core.session.workspace import Workspace

TEXT_UPLOADS = "texts"


def read_uploaded_images(uploads: Sequence[NamedFile]) -> tuple[list[str], list, list[Rejected]]:
    """Names and decoded images of uploaded files; refused files come back with their reason."""
    names, images, refused = [], [], []
    for upload in uploads:
        try:
            images.append(load_image(upload.getvalue(), name=upload.name))
            names.append(upload.name)
        except ImageRejected as rejection:
            refused.append(Rejected(upload.name, rejection.reason))
    return names, images, refused


def texts_from_upload(ws: Workspace, upload: NamedFile, column: str | None = None) -> list[str]:
    """Texts of an uploaded .txt (one per line) or .csv (a column), kept in the workspace under their content hash.

    A page reruns on every click with the upload still there: the same bytes land in the same file once.
    """
    data = upload.getvalue()
    suffix = Path(
        safe_file_name(upload.name)
    ).suffix.lower()  # a long one would not fit a file name
    stored = ws.files / TEXT_UPLOADS / f"{bytes_digest(data)[:16]}{suffix}"
    if not stored.is_file():
        ws.save_upload(TEXT_UPLOADS, stored.name, data)
    return load_texts(stored, column or None)


def embed_images(model: SharedModel, images: list) -> np.ndarray:
    """Vectors of query images; the model lock keeps sessions from running the model at once."""
    with model.lock:
        return model.embedder.embed_images(images)


def embed_texts(model: SharedModel, texts: list[str], cache: EmbeddingCache | None) -> np.ndarray:
    """Vectors of texts, from the embedding cache where possible, under the model lock."""
    with model.lock:
        return embed_texts_cached(texts, model.embedder, cache)


def query_model_mismatch(dataset_model: str, model: SharedModel) -> str | None:
    """A warning when queries would be embedded by another model than the one that made the dataset's vectors."""
    if dataset_model == model.embedder.identity:
        return None
    return (
        f"The dataset's vectors were made by `{dataset_model}`, but queries are embedded by "
        f"`{model.embedder.identity}`: the two compare meaningfully only if they are the same model."
    )
