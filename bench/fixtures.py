"""Benchmark inputs made on the spot: a random-weight ViT-B/32 CLIP, photo-like JPEGs, CLIP-like vectors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Real CLIP vectors are anisotropic and clustered: two random photos score about 0.4, two of one
# class about 0.75. These weights put synthetic vectors at those levels (measured in BENCHMARKS.md).
_SHARED_WEIGHT, _SUPERCLASS_WEIGHT, _CLASS_WEIGHT = 0.9, 0.55, 0.7
_ITEM_NOISE_IN_SUBSPACE, _ITEM_NOISE_ELSEWHERE = 0.6, 0.35
_SUBSPACE_RANK = 64  # directions the class structure and most item noise live in
_SUPERCLASSES = 100  # classes share parents, as dog breeds share "dog"
_ROWS_PER_CHUNK = 100_000  # rows generated at once, keeping temporaries small at 1M rows


def quiet_transformers() -> None:
    """Offline, and no progress bars or advisory logs from transformers in benchmark output."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


# A few byte-pair merges so the tokenizer merges something, as a real CLIP vocabulary does.
_MERGES = [("p", "h"), ("o", "t"), ("ph", "ot"), ("phot", "o</w>"), ("c", "a"), ("ca", "t</w>")]


def _write_byte_level_bpe(folder: Path) -> None:
    """vocab.json and merges.txt for a byte-level BPE with CLIP's word-end marker and specials."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = [
        *alphabet,
        *(char + "</w>" for char in alphabet),
        *(left + right for left, right in _MERGES),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "".join(f"{left} {right}\n" for left, right in _MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")


def random_clip_checkpoint(
    folder: Path,
    tower: dict | None = None,
    image_size: int | None = None,
    patch_size: int | None = None,
    max_tokens: int | None = None,
    projection_dim: int | None = None,
) -> Path:
    """A CLIP with random, seeded weights saved with its processor, as save_pretrained saves one.

    By default transformers' CLIPConfig: the ViT-B/32 architecture, whose random weights cost exactly
    the compute of trained ones, and openai/clip-vit-base-patch32's processor (224 px, bicubic, CLIP
    mean and std). `tower` (hidden sizes, layers, heads for both towers), `image_size`, `patch_size`,
    `max_tokens` and `projection_dim` make a smaller one. The tokenizer is a byte-level BPE with a
    few merges, written on the spot. A folder already holding the weights is returned as it is.
    """
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return folder
    tokenizer_files = folder / "tokenizer-source"
    tokenizer_files.mkdir(parents=True, exist_ok=True)
    _write_byte_level_bpe(tokenizer_files)
    tokenizer = CLIPTokenizer.from_pretrained(
        tokenizer_files, **({} if max_tokens is None else {"model_max_length": max_tokens})
    )
    text = {**(tower or {})}
    vision = {**(tower or {})}
    if max_tokens is not None:
        text["max_position_embeddings"] = max_tokens
    if image_size is not None:
        vision["image_size"] = image_size
    if patch_size is not None:
        vision["patch_size"] = patch_size
    config = CLIPConfig(
        text_config={
            **text,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision,
        **({} if projection_dim is None else {"projection_dim": projection_dim}),
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    # The Pillow backend: CLIPImageProcessor would fall back to it, noisily, without torchvision.
    image_processor = (
        CLIPImageProcessorPil()
        if image_size is None
        else CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def photo_jpeg(
    rng: np.random.Generator, size: tuple[int, int] = (640, 480), quality: int = 90
) -> bytes:
    """JPEG bytes of a photo-like picture: a lit gradient, soft-edged shapes and sensor noise."""
    width, height = size
    # Gradients and noise are drawn small and scaled up: smooth like light, and cheap to make.
    small = (max(2, width // 8), max(2, height // 8))
    ramp_x = np.linspace(0.0, 1.0, small[0])[None, :, None]
    ramp_y = np.linspace(0.0, 1.0, small[1])[:, None, None]
    base = (
        rng.uniform(30, 220, 3)
        + ramp_x * rng.uniform(-120, 120, 3)
        + ramp_y * rng.uniform(-120, 120, 3)
    )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (
            left,
            top,
            left + int(rng.integers(width // 10, width // 2)),
            top + int(rng.integers(height // 10, height // 2)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.BoxBlur(2))
    # A fine grating, as fabric, foliage or text give real photos detail near the pixel scale.
    period = rng.uniform(3, 12)
    left, top = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    patch = (
        np.sin(np.arange(width // 3) * (2 * np.pi / period))[None, :] * np.ones((height // 3, 1))
        + 1
    ) * 127
    image.paste(Image.fromarray(patch.astype(np.uint8)).convert("RGB"), (left, top))
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_photos(
    folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (640, 480)
) -> list[Path]:
    """`count` photo-like JPEGs in `folder`, made once: existing files are reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo-{seed}-{size[0]}x{size[1]}-{index:06d}.jpg"
        if not path.exists():
            # One generator per file: the same (seed, index) always gives the same bytes.
            path.write_bytes(photo_jpeg(np.random.default_rng([seed, index]), size))
        paths.append(path)
    return paths


class EmbeddingSpace:
    """Seeded CLIP-like unit vectors: items of a class cluster around it, classes around superclasses."""

    def __init__(self, n_classes: int, dim: int = 512, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        basis = (
            np.linalg.qr(self.rng.standard_normal((dim, _SUBSPACE_RANK)))[0].astype(np.float32).T
        )
        shared = self.rng.standard_normal(dim).astype(np.float32)
        superclasses = _unit(
            self.rng.standard_normal((_SUPERCLASSES, _SUBSPACE_RANK), dtype=np.float32) @ basis
        )
        own = _unit(self.rng.standard_normal((n_classes, _SUBSPACE_RANK), dtype=np.float32) @ basis)
        parents = self.rng.integers(0, _SUPERCLASSES, n_classes)
        self.centres = (
            _SHARED_WEIGHT * _unit(shared)
            + _SUPERCLASS_WEIGHT * superclasses[parents]
            + _CLASS_WEIGHT * own
        ).astype(np.float32)
        self.basis = basis

    @property
    def n_classes(self) -> int:
        return len(self.centres)

    def sample(self, labels: np.ndarray) -> np.ndarray:
        """One unit vector per label (a class number), float32."""
        out = np.empty((len(labels), self.dim), np.float32)
        for start in range(0, len(labels), _ROWS_PER_CHUNK):
            chunk = labels[start : start + _ROWS_PER_CHUNK]
            rows = self.centres[chunk]
            rows += (_ITEM_NOISE_IN_SUBSPACE / np.sqrt(_SUBSPACE_RANK)) * (
                self.rng.standard_normal((len(chunk), _SUBSPACE_RANK), dtype=np.float32)
                @ self.basis
            )
            rows += (_ITEM_NOISE_ELSEWHERE / np.sqrt(self.dim)) * self.rng.standard_normal(
                (len(chunk), self.dim), dtype=np.float32
            )
            out[start : start + len(chunk)] = _unit(rows)
        return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def retrieval_embeddings(
    n_test: int,
    n_classes: int = 1000,
    per_class: int = 3,
    distractor_share: float = 0.3,
    seed: int = 0,
):
    """The product's shape in synthetic vectors: `per_class` train items per class, and `n_test` test
    items of which `distractor_share` come from classes that train does not have ("-1")."""
    from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

    unseen_classes = max(1, int(n_classes * distractor_share / (1 - distractor_share)))
    space = EmbeddingSpace(n_classes + unseen_classes, seed=seed)
    train_classes = np.repeat(np.arange(n_classes), per_class)
    n_distractors = round(n_test * distractor_share)
    test_classes = np.concatenate(
        [
            space.rng.integers(0, n_classes, n_test - n_distractors),
            space.rng.integers(n_classes, n_classes + unseen_classes, n_distractors),
        ]
    )
    space.rng.shuffle(test_classes)
    classes = np.concatenate([train_classes, test_classes])
    labels = np.array(
        [f"class-{c}" if c < n_classes else DISTRACTOR for c in classes], dtype=object
    )
    return Embeddings(
        ids=np.array([f"item-{i}" for i in range(len(classes))]),
        splits=np.array([TRAIN] * len(train_classes) + [TEST] * n_test),
        labels=labels,
        vectors=space.sample(classes),
        model="synthetic CLIP-like 512-d",
    )
