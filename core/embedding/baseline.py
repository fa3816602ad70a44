"""The offline baseline embedder: downscaled, mean-centred pixels, no weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from core.embedding.config import CPU_BATCH_SIZE
from core.embedding.embedder import embed_by_preparing


class BaselineEmbedder:
    """Downscaled pixels: honest about what a model adds, and runs with no weights and no network."""

    side = 24  # thumbnail edge in pixels
    identity = f"baseline (downscaled pixels) {side}x{side} RGB, mean-centred"
    dim = side * side * 3
    supports_text = False
    draft_size = 2 * side
    device = "cpu"
    precision = None  # pixels have no precision to choose
    precision_note = None
    awaits_precision_check = False

    def default_batch_size(self) -> int:
        return CPU_BATCH_SIZE

    def use_threads(self, threads: int) -> None:
        """numpy's work per batch is too small to spread over threads."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return embed_by_preparing(self, images)

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return np.asarray(
            image.convert("RGB").resize((self.side, self.side), Image.Resampling.BOX), np.float32
        )

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        if not len(inputs):
            return np.empty((0, self.dim), np.float32)
        pixels = inputs.reshape(len(inputs), -1) / 255.0
        # Centring makes cosine compare patterns rather than brightness, which all photos share.
        centred = pixels - pixels.mean(axis=1, keepdims=True)
        # A flat image has no pattern left; all flat images share the one direction that is
        # orthogonal to every centred vector.
        flat = np.linalg.norm(centred, axis=1) < 1e-6
        centred[flat] = 1.0
        return (centred / np.linalg.norm(centred, axis=1, keepdims=True)).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError("the baseline cannot embed text; use a CLIP model for text prompts")
