"""Embedders (CLIP through transformers, and an offline pixel baseline) and the batched, cached embedding run."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse
from urllib.request import getproxies

import numpy as np
from PIL import Image

from core.embedding.cache import EmbeddingCache, file_key, text_key
from core.records import Dataset, Embeddings, Item, Rejected
from core.io.images import ImageRejected, load_image

BASELINE = "baseline"
DEFAULT_MODEL = "openai/clip-vit-base-patch32"
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")

KNOWN_MODELS = {
    "openai/clip-vit-base-patch32": "CLIP ViT-B/32, 512-d: the fastest CLIP and the default",
    "openai/clip-vit-base-patch16": "CLIP ViT-B/16, 512-d: finer patches, about 4x the compute of B/32, more accurate",
    "openai/clip-vit-large-patch14": "CLIP ViT-L/14, 768-d: about 20x the compute of B/32, the most accurate at 224 px",
    "openai/clip-vit-large-patch14-336": "CLIP ViT-L/14 at 336 px, 768-d: about 40x the compute of B/32, best on small details",
    BASELINE: "downscaled pixels, 1728-d: offline and without weights; a floor to compare against, no text",
}

# Decoding overlaps the model; two threads keep one batch ready on a small machine.
_DECODE_THREADS = 2
# Texts per model call when filling the cache: prompt lists are short, but a text file may not be.
_TEXT_BATCH = 256
# Seconds to wait for the Hub to answer a connection before calling it unreachable; the Hub
# client itself retries unreachable hosts for minutes.
_HUB_PROBE_SECONDS = 3.0
# What from_pretrained raises for checkpoints it cannot get or read: missing files, no network,
# offline mode and bad ids (OSError), a folder without a usable config (ValueError).
_LOAD_ERRORS = (OSError, ValueError)

ProgressCallback = Callable[[int, int, float], None]


def list_models() -> dict[str, str]:
    """The models this tool knows, with a one-line description each."""
    return dict(KNOWN_MODELS)


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be loaded here; the message says what to do instead."""


@dataclass(frozen=True)
class EmbedConfig:
    """How to turn images and texts into vectors."""

    model: str = DEFAULT_MODEL  # Hugging Face CLIP id, local checkpoint directory, or "baseline"
    batch_size: int = 16  # images per model call; an interrupted run loses at most one batch
    precision: str = "fp32"  # "fp32", or "bf16" for half the memory at cosine > 0.99 to fp32
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu; or name one of them
    revision: str | None = None  # Hub branch, tag or commit of the model; None means the default branch

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a CLIP id, a local checkpoint directory or {BASELINE!r}, got {self.model!r}")
        _check_batch_size(self.batch_size)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


class Embedder(Protocol):
    """What embed_dataset needs from a model."""

    identity: str  # names the model, version and precision; cache rows are keyed by it
    dim: int  # length of every vector
    supports_text: bool  # whether embed_texts works
    draft_size: int | None  # JPEGs may decode at reduced scale down to this many pixels a side

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...  # (n, dim) float32 unit rows

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...  # (n, dim) float32 unit rows


@runtime_checkable
class PreparingEmbedder(Protocol):
    """An embedder whose per-image preprocessing can run apart from the model call.

    embed_dataset prepares images in its decode threads, overlapped with the model working on the
    previous batch; embed_images(images) equals embed_prepared(np.stack([prepare_image(i) ...])).
    """

    def prepare_image(self, image: Image.Image) -> np.ndarray: ...  # the model's input for one image

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray: ...  # stacked prepare_image outputs -> unit rows


class BaselineEmbedder:
    """Downscaled pixels: honest about what a model adds, and runs with no weights and no network."""

    side = 24  # thumbnail edge in pixels
    identity = f"baseline (downscaled pixels) {side}x{side} RGB, mean-centred"
    dim = side * side * 3
    supports_text = False
    draft_size = 2 * side

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return _embed_by_preparing(self, images)

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((self.side, self.side), Image.Resampling.BOX), np.float32)

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


def _embed_by_preparing(embedder: BaselineEmbedder | ClipEmbedder, images: Sequence[Image.Image]) -> np.ndarray:
    if not images:
        return np.empty((0, embedder.dim), np.float32)
    return embedder.embed_prepared(np.stack([embedder.prepare_image(image) for image in images]))


@dataclass(frozen=True, eq=False)
class FastClipPreprocessing:
    """A CLIP image processor's steps redone cheaply: bicubic shortest-edge resize, centre crop, rescale, normalise.

    Pillow resizes exactly as the processor's Pillow backend does; rescale and normalise fold into
    one multiply-add written straight into the (3, H, W) float32 array. of() returns None for
    configurations this does not replicate, and the processor itself is used instead.
    """

    shortest_edge: int  # the resized image's shorter side, in pixels
    crop: tuple[int, int]  # (height, width) cut from the centre; no larger than shortest_edge
    resample: Image.Resampling  # the processor's resampling filter
    scale: np.ndarray  # (3, 1, 1) rescale_factor / std per channel
    offset: np.ndarray  # (3, 1, 1) -mean / std per channel

    @classmethod
    def of(cls, processor) -> FastClipPreprocessing | None:
        """The fast path for `processor`, or None when its output would not be reproduced to 1e-4."""
        size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        # Square resizes, longest-edge caps, padding, skipped steps, and crops larger than the
        # resized image (which the processor pads) are left to the processor.
        replicable = (
            all(getattr(processor, flag, False) for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"))
            and not getattr(processor, "do_pad", False)
            and size is not None
            and crop is not None
            and bool(size.get("shortest_edge"))
            and not any(size.get(key) for key in ("height", "width", "longest_edge"))
            and bool(crop.get("height") and crop.get("width"))
            and max(crop["height"], crop["width"]) <= size["shortest_edge"]
            and np.size(mean) == np.size(std) == 3
        )
        if not replicable:
            return None
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        fast = cls(
            shortest_edge=int(size["shortest_edge"]),
            crop=(int(crop["height"]), int(crop["width"])),
            resample=Image.Resampling(processor.resample),
            scale=(processor.rescale_factor / std).astype(np.float32).reshape(3, 1, 1),
            offset=(-mean / std).astype(np.float32).reshape(3, 1, 1),
        )
        # One odd-sized, non-square probe checks the whole chain against the processor itself.
        probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 47, 3), dtype=np.uint8))
        expected = processor(images=[probe], return_tensors="np")["pixel_values"][0]
        return fast if np.allclose(fast(probe), expected, atol=1e-4) else None

    def __call__(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        # The processor's rounding: the short side becomes shortest_edge, the long side is truncated.
        if width <= height:
            new_width, new_height = self.shortest_edge, int(self.shortest_edge * height / width)
        else:
            new_width, new_height = int(self.shortest_edge * width / height), self.shortest_edge
        crop_height, crop_width = self.crop
        top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
        resized = image.resize((new_width, new_height), self.resample)
        pixels = np.asarray(resized.crop((left, top, left + crop_width, top + crop_height)))
        prepared = np.empty((3, crop_height, crop_width), np.float32)
        np.multiply(pixels.transpose(2, 0, 1), self.scale, out=prepared)
        prepared += self.offset
        return prepared


class ClipEmbedder:
    """A CLIP checkpoint's image and text towers, fed by the checkpoint's own preprocessing (or FastClipPreprocessing)."""

    supports_text = True

    def __init__(self, config: EmbedConfig) -> None:
        import torch

        _use_all_cores()
        self.device = _pick_device(config.device)
        self._dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        model, self._image_processor, self._tokenizer = _load_checkpoint(config.model, config.revision)
        self._model = model.to(self.device, dtype=self._dtype).eval()
        # The image vector depends only on the CLS token after the last encoder layer, so that layer
        # runs for the CLS query alone (keys and values still for every token): 6.6% fewer FLOPs
        # for ViT-B/32, the same vectors to float rounding (1e-6).
        cls_only = _runs_transformers_clip_vision(self._model)
        self._image_tower = partial(_image_features, self._model) if cls_only else self._model.get_image_features
        self.dim = int(model.config.projection_dim)
        self._max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self.identity = _clip_identity(config, model.config.to_json_string(), self._image_processor.to_json_string())
        self._fast_preprocessing = FastClipPreprocessing.of(self._image_processor)
        target = self._image_processor.size
        edge = target.get("shortest_edge") or target.get("height")
        # JPEGs decode at 1/2, 1/4 or 1/8 scale while both sides stay at least the model's input
        # size; the bicubic resize then filters far fewer pixels (cosine to a full decode > 0.99).
        self.draft_size = int(edge) if edge else None

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return _embed_by_preparing(self, images)

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        if self._fast_preprocessing is not None and image.mode == "RGB":
            return self._fast_preprocessing(image)
        return self._image_processor(images=[image], return_tensors="np")["pixel_values"][0]

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        if not len(inputs):
            return np.empty((0, self.dim), np.float32)
        pixels = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
        return self._projected(self._image_tower, pixel_values=pixels.to(self.device, self._dtype))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        tokens = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self._max_text_tokens, return_tensors="pt"
        )
        return self._projected(self._model.get_text_features, **tokens.to(self.device))

    @staticmethod
    def _projected(tower: Callable, **inputs) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = tower(**inputs)
        # transformers 5 returns a model output whose pooler_output holds the projected vectors.
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def _runs_transformers_clip_vision(model) -> bool:
    """Whether `model` computes image features with transformers' own CLIP code, which _image_features reproduces."""
    import torch
    from transformers.models.clip import modeling_clip as clip

    vision = getattr(model, "vision_model", None)
    encoder = getattr(vision, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not layers:
        return False
    # Subclasses that change any of these methods change the maths: they keep get_image_features.
    # The layers before the last are called as CLIPEncoder calls them, whatever they are.
    own_methods = [
        (model, clip.CLIPModel, "get_image_features"),
        (vision, clip.CLIPVisionModel, "forward"),
        (encoder, clip.CLIPEncoder, "forward"),
        (layers[-1], clip.CLIPEncoderLayer, "forward"),
        (getattr(layers[-1], "self_attn", None), clip.CLIPAttention, "forward"),
    ]
    return all(
        isinstance(module, cls) and getattr(type(module), method) is getattr(cls, method)
        for module, cls, method in own_methods
    )


def _image_features(model, pixel_values):
    """model.get_image_features(pixel_values).pooler_output, with the last encoder layer run for the CLS token only.

    The projected vector is visual_projection(post_layernorm(CLS token after the last layer)), so the
    last layer needs only the CLS query: its attention over every token's key and value, out_proj,
    the residual, then layer_norm2 and the MLP on that one token.
    """
    import torch

    vision = model.vision_model
    *layers, last = vision.encoder.layers
    # get_image_features's default: no position-encoding interpolation, other sizes are refused.
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=False))
    for layer in layers:
        hidden = layer(hidden, None)  # as CLIPEncoder calls them: the vision tower has no attention mask
    attention = last.self_attn
    normed = last.layer_norm1(hidden)
    batch = hidden.shape[0]

    def by_head(states):  # (batch, tokens, embed) -> (batch, heads, tokens, head_dim), as CLIPAttention splits
        return states.view(batch, states.shape[1], -1, attention.head_dim).transpose(1, 2)

    attended = torch.nn.functional.scaled_dot_product_attention(
        by_head(attention.q_proj(normed[:, :1])),
        by_head(attention.k_proj(normed)),
        by_head(attention.v_proj(normed)),
        dropout_p=attention.dropout if attention.training else 0.0,
        scale=attention.scale,
    )
    cls = hidden[:, 0] + attention.out_proj(attended.transpose(1, 2).reshape(batch, -1))
    cls = cls + last.mlp(last.layer_norm2(cls))
    return model.visual_projection(vision.post_layernorm(cls))


def load_embedder(config: EmbedConfig) -> Embedder:
    """The embedder for `config`; raises ModelUnavailableError when CLIP weights cannot be had."""
    return BaselineEmbedder() if config.model == BASELINE else ClipEmbedder(config)


@cache
def _use_all_cores() -> None:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(usable or 1)


def _pick_device(requested: str) -> str:
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if requested == "auto":
        return next(device for device, present in available.items() if present)
    if not available[requested]:
        raise ValueError(f"device {requested!r} is not available on this machine; use 'auto' or 'cpu'")
    return requested


def _load_checkpoint(model: str, revision: str | None):
    """CLIPModel, image processor and tokenizer: from local files first, the Hub only if it answers."""
    from huggingface_hub import is_offline_mode
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    directory = Path(model).expanduser()
    source = str(directory) if directory.is_dir() else model

    def load(local_only: bool):
        options = {"revision": revision, "local_files_only": local_only}
        model_type = AutoConfig.from_pretrained(source, **options).model_type
        if model_type != "clip":
            raise ModelUnavailableError(
                f"model {model!r} is a {model_type!r} checkpoint, not CLIP; pass a CLIP id or checkpoint "
                f"directory, or use `--model baseline`"
            )
        return (
            CLIPModel.from_pretrained(source, **options),
            AutoImageProcessor.from_pretrained(source, **options),
            AutoTokenizer.from_pretrained(source, **options),
        )

    try:
        return load(local_only=True)
    except _LOAD_ERRORS as error:
        if directory.is_dir() or is_offline_mode() or not _hub_reachable():
            raise ModelUnavailableError(_unavailable_message(model, directory.is_dir(), error)) from None
    try:
        return load(local_only=False)
    except _LOAD_ERRORS as error:
        raise ModelUnavailableError(_unavailable_message(model, False, error)) from None


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if getproxies().get("https"):
        return True  # behind a proxy only the Hub client itself can tell
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=_HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _unavailable_message(model: str, is_directory: bool, error: Exception) -> str:
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    offline_hint = "`--model baseline` works offline with no weights at all."
    if is_directory:
        return (
            f"cannot load a CLIP checkpoint from the directory {model} ({cause}). It must hold what "
            f"save_pretrained writes for CLIPModel and its processor (config, weights, tokenizer and "
            f"preprocessor files). {offline_hint}"
        )
    return (
        f"cannot load the CLIP model {model!r}: its weights are not in the local Hugging Face cache and "
        f"the Hub cannot be used ({cause}). Pass a local directory holding the checkpoint (the output of "
        f"save_pretrained), set HF_HOME to a cache that already holds it, or allow network access "
        f"(unset HF_HUB_OFFLINE). {offline_hint}"
    )


def _clip_identity(config: EmbedConfig, model_config_json: str, processor_json: str) -> str:
    """Model name, version, precision and a fingerprint, so different weights never share cache rows."""
    directory = Path(config.model).expanduser()
    fingerprint = hashlib.sha256((model_config_json + processor_json).encode())
    if directory.is_dir():
        # A local directory has no commit, and two of them can share a name: hash the weights.
        for weights in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
            fingerprint.update(file_key(weights).encode())
        name, version = directory.name, "local"
    else:
        name, version = config.model, _hub_commit(config.model, config.revision) or config.revision or "default"
    return f"{name}@{version} {config.precision} cfg:{fingerprint.hexdigest()[:12]}"


def _hub_commit(model: str, revision: str | None) -> str | None:
    """The commit a cached Hub model was loaded from: its snapshot folder is named after it."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    return extract_commit_hash(cached, None) if isinstance(cached, str) else None


@dataclass
class EmbedRun:
    """What an embedding run produced and how."""

    embeddings: Embeddings  # accepted items in dataset order; model is the embedder's identity
    rejected: list[Rejected]  # items that could not be read or decoded, with reasons
    computed: int  # items the model embedded in this run
    from_cache: int  # items whose vectors were already cached
    seconds: float  # wall time of the whole run


def embed_dataset(
    dataset: Dataset,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> EmbedRun:
    """Vectors for every readable item, from the cache where possible, committing each batch.

    Unreadable or undecodable items become rejections and the run goes on. progress(done, total,
    images_per_second) is called after every batch (once, with done == total, if nothing needed
    computing). Identical files are decoded and embedded once.
    """
    batch_size = EmbedConfig.batch_size if batch_size is None else batch_size
    _check_batch_size(batch_size)
    started = time.perf_counter()
    keys, unreadable = _content_keys(dataset.items)
    copies = Counter(keys.values())
    vectors = cache.get_many(embedder.identity, copies) if cache is not None else {}
    from_cache = sum(copies[key] for key in vectors)

    todo: dict[str, Item] = {}
    for item in dataset.items:
        if item.id in keys and keys[item.id] not in vectors:
            todo.setdefault(keys[item.id], item)
    pending = list(todo.items())
    batches = [dict(pending[start : start + batch_size]) for start in range(0, len(pending), batch_size)]
    total, computed = len(dataset.items), 0
    done = total - sum(copies[key] for key in todo)
    undecodable: dict[str, str] = {}
    # Decode threads also prepare the model's inputs when the embedder can, so the main thread only runs the model.
    preparing = isinstance(embedder, PreparingEmbedder)
    prepare = embedder.prepare_image if preparing else None
    embed = (lambda inputs: embedder.embed_prepared(np.stack(inputs))) if preparing else embedder.embed_images
    with ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="decode") as pool:
        for images, failed in _decoded_batches(pool, batches, embedder.draft_size, prepare):
            undecodable.update(failed)
            if images:
                fresh = dict(zip(images, embed(list(images.values()))))
                if cache is not None:
                    cache.put_many(embedder.identity, fresh)
                vectors.update(fresh)
            computed += sum(copies[key] for key in images)
            done += sum(copies[key] for key in (*images, *failed))
            if progress is not None:
                progress(done, total, computed / (time.perf_counter() - started))
    if progress is not None and not batches:
        progress(total, total, 0.0)

    accepted = [item for item in dataset.items if keys.get(item.id) in vectors]
    rejected = [
        Rejected(item.id, unreadable[item.id] if item.id in unreadable else undecodable[keys[item.id]])
        for item in dataset.items
        if keys.get(item.id) not in vectors
    ]
    return EmbedRun(
        embeddings=_embeddings_of(accepted, [vectors[keys[item.id]] for item in accepted], embedder),
        rejected=rejected,
        computed=computed,
        from_cache=from_cache,
        seconds=time.perf_counter() - started,
    )


def _content_keys(items: Sequence[Item]) -> tuple[dict[str, str], dict[str, str]]:
    """Cache key by item id, and the reason by item id for files that cannot be read."""
    keys, unreadable = {}, {}
    for item in items:
        try:
            keys[item.id] = file_key(item.path)
        except OSError as error:
            unreadable[item.id] = f"cannot read the file: {error.strerror or error}"
    return keys, unreadable


def _decoded_batches(
    pool: ThreadPoolExecutor,
    batches: list[dict[str, Item]],
    draft_size: int | None,
    prepare: Callable[[Image.Image], np.ndarray] | None,
) -> Iterator[tuple[dict[str, Image.Image | np.ndarray], dict[str, str]]]:
    """Per batch, images (or prepared inputs) by key and rejection reasons by key; the next batch decodes meanwhile."""
    if not batches:
        return
    upcoming = _submit_decodes(pool, batches[0], draft_size, prepare)
    for following in [*batches[1:], None]:
        current = upcoming
        upcoming = _submit_decodes(pool, following, draft_size, prepare) if following else {}
        results = {key: future.result() for key, future in current.items()}
        yield (
            {key: result for key, result in results.items() if not isinstance(result, ImageRejected)},
            {key: result.reason for key, result in results.items() if isinstance(result, ImageRejected)},
        )


def _submit_decodes(
    pool: ThreadPoolExecutor, batch: dict[str, Item], draft_size: int | None, prepare
) -> dict[str, Future]:
    return {key: pool.submit(_decode, item, draft_size, prepare) for key, item in batch.items()}


def _decode(item: Item, draft_size: int | None, prepare) -> Image.Image | np.ndarray | ImageRejected:
    try:
        image = load_image(item.path, name=item.id, draft_size=draft_size)
    except ImageRejected as rejection:
        return rejection
    return image if prepare is None else prepare(image)


def _embeddings_of(items: Sequence[Item], vectors: Sequence[np.ndarray], embedder: Embedder) -> Embeddings:
    return Embeddings(
        ids=np.array([item.id for item in items], dtype=str),
        splits=np.array([item.split for item in items], dtype=str),
        labels=np.array([item.label for item in items], dtype=object),
        vectors=np.stack(vectors).astype(np.float32) if vectors else np.empty((0, embedder.dim), np.float32),
        model=embedder.identity,
    )


def embed_texts_cached(texts: Sequence[str], embedder: Embedder, cache: EmbeddingCache | None = None) -> np.ndarray:
    """Vectors for `texts` in order, from the cache where possible; new ones are cached per batch."""
    keys = [text_key(text) for text in texts]
    vectors = cache.get_many(embedder.identity, keys) if cache is not None else {}
    missing = list(dict.fromkeys(text for text, key in zip(texts, keys) if key not in vectors))
    for start in range(0, len(missing), _TEXT_BATCH):
        chunk = missing[start : start + _TEXT_BATCH]
        fresh = dict(zip(map(text_key, chunk), embedder.embed_texts(chunk)))
        if cache is not None:
            cache.put_many(embedder.identity, fresh)
        vectors.update(fresh)
    return np.stack([vectors[key] for key in keys]) if keys else np.empty((0, embedder.dim), np.float32)
