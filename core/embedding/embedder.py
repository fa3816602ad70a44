"""What the embedding run needs from a model: the Embedder protocols, and embedding by preparing each image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


class Embedder(Protocol):
    """What embed_dataset and the Ray workers need from a model."""

    identity: str  # names the model, version and precision; cache rows are keyed by it
    dim: int  # length of every vector
    supports_text: bool  # whether embed_texts works
    draft_size: int | None  # JPEGs may decode at reduced scale down to this many pixels a side
    device: str  # where the model computes: "cpu", "cuda" or "mps"
    precision: str | None  # the precision it computes in; None for a model without one
    precision_note: str | None  # one line: the precision in use and why; None without one
    # True until the dataset's first batch has settled a precision "auto" (see ClipEmbedder)
    awaits_precision_check: bool

    def default_batch_size(self) -> int: ...  # images per model call when the config gives none

    def use_threads(self, threads: int) -> None: ...  # compute on this many threads of the CPU

    # (n, dim) float32 unit rows
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...  # (n, dim) float32 unit rows


@runtime_checkable
class PreparingEmbedder(Protocol):
    """An embedder whose per-image preprocessing can run apart from the model call.

    embed_dataset prepares images in its decode threads, overlapped with the model working on the
    previous batch; embed_images(images) equals embed_prepared(np.stack([prepare_image(i) ...])).
    """

    # the model's input for one image
    def prepare_image(self, image: Image.Image) -> np.ndarray: ...

    # stacked prepare_image outputs -> unit rows
    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray: ...


def embed_by_preparing(embedder: Embedder, images: Sequence[Image.Image]) -> np.ndarray:
    if not images:
        return np.empty((0, embedder.dim), np.float32)
    return embedder.embed_prepared(np.stack([embedder.prepare_image(image) for image in images]))
