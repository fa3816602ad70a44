"""CLIP through transformers: fast preprocessing, the embedder with its CLS-only last layer, device, precision and identity."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from core.embedding.config import (
    CPU_BATCH_SIZE,
    MAX_GPU_BATCH_SIZE,
    REMEDIES,
    EmbedConfig,
    cannot_run,
)
from core.embedding.embedder import embed_by_preparing
from core.embedding.hub import hub_commit, load_checkpoint
from core.embedding.openvino_tower import OpenVinoTower, openvino_available
from core.io.files import file_digest
from core.paths import workspace_home

# "auto" keeps bf16 only if, on the run's first batch, a median image's vector barely moves from
# fp32 and each image's nearest neighbours within the batch stay nearly the same (issue #15).
MIN_MEDIAN_COSINE = 0.999
MIN_NEIGHBOUR_AGREEMENT = 0.95
NEIGHBOURS_COMPARED = 5
# /proc/cpuinfo flags of native bf16 arithmetic; without them torch emulates bf16, slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# A GPU's batch: as many images as this share of its free memory holds by ACTIVATION_WIDTHS, the
# hidden-state-sized tensors one encoder layer keeps alive per token (states, q/k/v, attention
# output, the 4x MLP, norms and residuals, with room to spare), plus the attention matrix.
GPU_MEMORY_SHARE = 0.25
ACTIVATION_WIDTHS = 16
# Converted OpenVINO image towers, one per model, under the workspace home.
OPENVINO_FOLDER = "openvino"


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
            all(
                getattr(processor, flag, False)
                for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
            )
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
        probe = Image.fromarray(
            np.random.default_rng(0).integers(0, 256, (61, 47, 3), dtype=np.uint8)
        )
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


@dataclass(frozen=True)
class PrecisionCheck:
    """bf16 against fp32 on one batch of the user's images: what was measured, and whether bf16 may be kept."""

    images: int  # images in the batch, each embedded in both precisions
    median_cosine: float  # median over the images of the cosine between their bf16 and fp32 vectors
    # mean share of each image's nearest neighbours in the batch both find; None below
    # NEIGHBOURS_COMPARED + 1 images
    neighbour_agreement: float | None

    @classmethod
    def of(cls, fp32_vectors: np.ndarray, bf16_vectors: np.ndarray) -> PrecisionCheck:
        """The check of one batch's unit-length vectors, row i of both being the same image."""
        cosines = np.sum(fp32_vectors * bf16_vectors, axis=1)
        enough = len(fp32_vectors) > NEIGHBOURS_COMPARED
        agreement = _neighbour_agreement(fp32_vectors, bf16_vectors) if enough else None
        return cls(len(fp32_vectors), float(np.median(cosines)), agreement)

    @property
    def shortfalls(self) -> list[str]:
        """What falls below its threshold, each as "measure value < threshold"; empty when bf16 may be kept."""
        shortfalls = []
        if not self.median_cosine >= MIN_MEDIAN_COSINE:
            shortfalls.append(f"median cosine {self.median_cosine:.4f} < {MIN_MEDIAN_COSINE}")
        if (
            self.neighbour_agreement is not None
            and not self.neighbour_agreement >= MIN_NEIGHBOUR_AGREEMENT
        ):
            shortfalls.append(
                f"top-{NEIGHBOURS_COMPARED} agreement {self.neighbour_agreement:.2f} < {MIN_NEIGHBOUR_AGREEMENT}"
            )
        return shortfalls

    def summary(self) -> str:
        """The measures as one phrase, for the line saying which precision a run used."""
        agreement = (
            f"top-{NEIGHBOURS_COMPARED} agreement {self.neighbour_agreement:.2f}"
            if self.neighbour_agreement is not None
            else f"top-{NEIGHBOURS_COMPARED} agreement not measured with {self.images} images"
        )
        return f"median cosine {self.median_cosine:.4f}, {agreement}"


def _neighbour_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Mean over items of the share of their NEIGHBOURS_COMPARED nearest (among the others) both vector sets find."""

    def nearest(vectors: np.ndarray) -> np.ndarray:
        similarities = vectors @ vectors.T
        np.fill_diagonal(similarities, -np.inf)
        return np.argsort(-similarities, axis=1, kind="stable")[:, :NEIGHBOURS_COMPARED]

    shared = [len(np.intersect1d(a, b)) for a, b in zip(nearest(first), nearest(second))]
    return float(np.mean(shared)) / NEIGHBOURS_COMPARED


@dataclass(frozen=True)
class Backend:
    """What computes the image vectors: a runtime and the precision it computes in."""

    runtime: str  # "torch" or "openvino"
    precision: str  # "fp32" or "bf16"

    def __str__(self) -> str:
        return self.precision if self.runtime == "torch" else f"{self.runtime} {self.precision}"


# The reference every faster backend is checked against.
TORCH_FP32 = Backend("torch", "fp32")


def resolve_precision(requested: str, device: str) -> str:
    """The precision "auto" stands for on `device` ("cpu", "cuda" or "mps"); any other request stands for itself."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        # GPUs before Ampere have no bf16 but fast fp16 (tensor cores since Volta).
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device == "cpu" and NATIVE_BF16_CPU_FLAGS & cpu_flags() else "fp32"


def _plan(config: EmbedConfig, device: str) -> tuple[list[Backend], Backend, str]:
    """The faster backends to try on the first batch, the backend kept when none is tried or none agrees, and why."""
    if why := cannot_run(config.runtime, config.precision, device):
        raise ValueError(f"{why}, and device auto chose {device!r}; {REMEDIES[why]}")
    _check_openvino_installed(config.runtime)
    # A precision chosen by name is computed exactly so (torch), unless OpenVINO is asked for by name too.
    with_openvino = config.runtime == "openvino" or (
        config.runtime == "auto"
        and config.precision == "auto"
        and device == "cpu"
        and openvino_available()
    )
    torch_precision = resolve_precision(config.precision, device)
    fallback = TORCH_FP32 if config.precision == "auto" else Backend("torch", torch_precision)
    candidates = (
        [Backend("openvino", resolve_precision(config.precision, "cpu"))] if with_openvino else []
    )
    if config.precision == "auto" and torch_precision != "fp32":
        candidates.append(Backend("torch", torch_precision))
    chosen = "auto" if config.precision == "auto" else "as chosen"
    if candidates:
        return (
            candidates,
            fallback,
            f"{chosen}; {candidates[0]} once a first batch agrees with fp32",
        )
    if config.precision == "auto":
        return (
            [],
            fallback,
            "auto; bf16 is not native here (that needs a CPU with AVX512-BF16 or AMX, or a CUDA GPU with bf16)",
        )
    return [], fallback, chosen


def _check_openvino_installed(runtime: str) -> None:
    if runtime == "openvino" and not openvino_available():
        raise ValueError(
            "runtime 'openvino' needs the openvino package (pip install openvino); or use runtime 'torch'"
        )


def gpu_batch_size(free_bytes: int, bytes_per_image: int) -> int:
    """As many images as GPU_MEMORY_SHARE of `free_bytes` holds, within CPU_BATCH_SIZE and MAX_GPU_BATCH_SIZE."""
    return int(
        min(
            MAX_GPU_BATCH_SIZE,
            max(CPU_BATCH_SIZE, GPU_MEMORY_SHARE * free_bytes // bytes_per_image),
        )
    )


def backend_in(identity: str) -> Backend | None:
    """The backend a ClipEmbedder identity names (see identity_of); None for another embedder's identity."""
    match = re.fullmatch(r".*? (?:(openvino) )?(fp32|bf16|fp16) cfg:[0-9a-f]+", identity)
    return None if match is None else Backend(match[1] or "torch", match[2])


def _file_name(identity: str) -> str:
    """A file name standing for a model identity (which holds slashes and spaces)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in `cpuinfo`; none elsewhere, where "auto" therefore means fp32."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return frozenset(
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    )


class ClipEmbedder:
    """A CLIP checkpoint's image and text towers, fed by the checkpoint's own preprocessing (or FastClipPreprocessing).

    With precision "auto" resolving to bf16, the model stays in fp32 until check_precision has
    compared both on a first batch: until then everything it computes is fp32, and says so.
    """

    supports_text = True

    def __init__(self, config: EmbedConfig, settled: Backend | None = None) -> None:
        """`settled` is a backend another process's first batch already chose for this model (a Ray worker's);
        without it, config's precision and runtime decide what the first batch checks."""
        use_all_cores()
        self.device = _pick_device(config.device)
        # set when a faster backend's first batch has been checked
        self.precision_check: PrecisionCheck | None = None
        # Tried in order on the first batch; the first whose vectors agree with torch fp32's is kept.
        if settled is None:
            self._candidates, self._fallback, self._precision_reason = _plan(config, self.device)
        elif cannot_run(settled.runtime, settled.precision, self.device):
            raise ValueError(
                f"the run's first batch settled on {settled}, which this worker's device ({self.device}) cannot run; "
                "give --runtime torch and a --precision every worker runs"
            )
        else:
            _check_openvino_installed(settled.runtime)
            self._candidates, self._fallback, self._precision_reason = (
                [],
                settled,
                "as the run's first batch settled it",
            )
        self.awaits_precision_check = bool(self._candidates)
        self._openvino_tower: OpenVinoTower | None = None
        self._fp32_weights = None  # the exact fp32 weights while a bf16 candidate is tried
        model, self._image_processor, self._tokenizer = load_checkpoint(
            config.model, config.revision
        )
        self._model = model.eval()
        self._use(TORCH_FP32 if self.awaits_precision_check else self._fallback)
        # The image vector depends only on the CLS token after the last encoder layer, so that layer
        # runs for the CLS query alone (keys and values still for every token): 6.6% fewer FLOPs
        # for ViT-B/32, the same vectors to float rounding (1e-6).
        cls_only = _runs_transformers_clip_vision(self._model)
        self._image_tower = (
            partial(_image_features, self._model) if cls_only else self._model.get_image_features
        )
        self.dim = int(model.config.projection_dim)
        self._max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self._model_version, self._fingerprint = _clip_identity(
            config, model.config.to_json_string(), self._image_processor.to_json_string()
        )
        self._fast_preprocessing = FastClipPreprocessing.of(self._image_processor)
        target = self._image_processor.size
        edge = target.get("shortest_edge") or target.get("height")
        # JPEGs decode at 1/2, 1/4 or 1/8 scale while both sides stay at least the model's input
        # size; the bicubic resize then filters far fewer pixels (cosine to a full decode > 0.99).
        self.draft_size = int(edge) if edge else None
        crop = self._image_processor.crop_size or target
        self._input_size = (int(crop.get("height") or edge), int(crop.get("width") or edge))

    @property
    def identity(self) -> str:
        """Model name, version, the backend in use and a fingerprint: cache rows and Parquet files are keyed by it."""
        return self.identity_of(self.backend)

    def identity_of(self, backend: Backend) -> str:
        """The identity of this model's vectors computed by `backend`."""
        return f"{self._model_version} {backend} cfg:{self._fingerprint}"

    @property
    def check_identities(self) -> list[str]:
        """The identities whose first-batch vectors settle an awaited check: torch fp32's, then each candidate's."""
        return [self.identity_of(backend) for backend in (TORCH_FP32, *self._candidates)]

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def precision_note(self) -> str:
        """One line: the backend the vectors are computed by, and why."""
        return f"precision: {self.backend} ({self._precision_reason})"

    def settle_precision(
        self, first_batch: dict[str, np.ndarray], inputs: np.ndarray | None = None
    ) -> dict[str, np.ndarray] | None:
        """Keep the first candidate whose vectors for the first batch agree with torch fp32's, else the fallback.

        `first_batch` holds vectors already known (from the cache), by identity; the rest are
        computed from the prepared `inputs`. Without inputs, nothing is computed and None comes back
        when something needed is missing (the check stays awaited). Returns the vectors computed
        now, by identity, to be cached.
        """
        if not self.awaits_precision_check:
            raise RuntimeError(
                f"a first batch settles precision once; this embedder's is settled: {self.precision_note}"
            )
        known, computed = dict(first_batch), {}

        def vectors_of(backend: Backend) -> np.ndarray | None:
            identity = self.identity_of(backend)
            if identity not in known and inputs is not None:
                self._use(backend)
                known[identity] = computed[identity] = self.embed_prepared(inputs)
            return known.get(identity)

        reference = vectors_of(TORCH_FP32)
        refusals = []
        for candidate in self._candidates:
            if reference is None:
                return None
            try:
                vectors = vectors_of(candidate)
            except Exception as error:
                # a model OpenVINO cannot convert or compile: the next candidate
                refusals.append(
                    f"{candidate} cannot run it ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                )
                continue
            if vectors is None:
                return None
            check = PrecisionCheck.of(reference, vectors)
            if not check.shortfalls:
                self._settle(candidate, check, refusals)
                return computed
            refusals.append(
                f"{candidate} refused, the first batch disagrees with fp32: {', '.join(check.shortfalls)}"
            )
        self._settle(self._fallback, None, refusals)
        return computed

    def _settle(self, backend: Backend, check: PrecisionCheck | None, refusals: list[str]) -> None:
        self._use(backend)
        self.precision_check, self.awaits_precision_check = check, False
        kept = [f"first batch agrees with fp32: {check.summary()}"] if check is not None else []
        self._precision_reason = "; ".join([self._precision_reason.split(";")[0], *refusals, *kept])
        self._fp32_weights = None

    def _use(self, backend: Backend) -> None:
        """Compute with `backend` from now on; the fp32 weights come back exactly when a bf16 try is left."""
        import torch

        # The text tower stays in torch; fp16 is autocast over fp32 weights (layer norms and softmax stay fp32).
        torch_precision = (
            backend.precision
            if backend.runtime == "torch" and backend.precision != "fp16"
            else "fp32"
        )
        if torch_precision == "bf16" and self._fp32_weights is None and self.awaits_precision_check:
            self._fp32_weights = self._model.state_dict()
        self._dtype = torch.bfloat16 if torch_precision == "bf16" else torch.float32
        self._model.to(self.device, dtype=self._dtype)
        if torch_precision == "fp32" and self._fp32_weights is not None:
            self._model.load_state_dict(self._fp32_weights)
        self.backend = backend

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return embed_by_preparing(self, images)

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        if self._fast_preprocessing is not None and image.mode == "RGB":
            return self._fast_preprocessing(image)
        return self._image_processor(images=[image], return_tensors="np")["pixel_values"][0]

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        if not len(inputs):
            return np.empty((0, self.dim), np.float32)
        if self.runtime == "openvino":
            return self._projected(
                lambda pixel_values: torch.from_numpy(self._compiled_tower()(pixel_values)),
                pixel_values=inputs,
            )
        pixels = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
        if self.device == "cuda":
            # Page-locked memory lets the copy run asynchronously, overlapping the previous batch's work.
            return self._projected(
                self._image_tower,
                pixel_values=pixels.pin_memory().to(self.device, self._dtype, non_blocking=True),
            )
        return self._projected(self._image_tower, pixel_values=pixels.to(self.device, self._dtype))

    def use_threads(self, threads: int) -> None:
        """torch's threads: after the model loads, which claims every core, so that Ray actors on one
        machine share its cores."""
        import torch

        torch.set_num_threads(threads)

    def default_batch_size(self) -> int:
        """Images per model call when none is given: CPU_BATCH_SIZE on the CPU, on a GPU what its free memory holds."""
        if self.device != "cuda":
            return CPU_BATCH_SIZE
        import torch

        free_bytes, _ = torch.cuda.mem_get_info()
        vision = self._model.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        element = 4 if self.precision == "fp32" else 2
        per_image = element * (
            tokens * vision.hidden_size * ACTIVATION_WIDTHS + vision.num_attention_heads * tokens**2
        )
        return gpu_batch_size(free_bytes, per_image)

    def _compiled_tower(self) -> OpenVinoTower:
        """The image tower compiled by OpenVINO, converted at its first use (not for a run whose vectors are all cached)."""
        if self._openvino_tower is None:
            self._openvino_tower = OpenVinoTower(
                self._model,
                self._image_tower,
                self._input_size,
                workspace_home() / OPENVINO_FOLDER,
                _file_name(self.identity_of(TORCH_FP32)),
                self.precision,
            )
        return self._openvino_tower

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        tokens = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self._max_text_tokens,
            return_tensors="pt",
        )
        return self._projected(self._model.get_text_features, **tokens.to(self.device))

    def _projected(self, tower: Callable, **inputs) -> np.ndarray:
        import contextlib

        import torch

        autocast = (
            torch.autocast(self.device, dtype=torch.float16)
            if self.backend.precision == "fp16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
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
        # as CLIPEncoder calls them: the vision tower has no attention mask
        hidden = layer(hidden, None)
    attention = last.self_attn
    normed = last.layer_norm1(hidden)
    batch = hidden.shape[0]

    # (batch, tokens, embed) -> (batch, heads, tokens, head_dim), as CLIPAttention splits
    def by_head(states):
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def use_all_cores() -> None:
    """torch's threads set to the cores this process may run on, once per process."""
    import torch

    torch.set_num_threads(usable_cores())


def _pick_device(requested: str) -> str:
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(device for device, present in available.items() if present)
    if not available[requested]:
        raise ValueError(
            f"device {requested!r} is not available on this machine; use 'auto' or 'cpu'"
        )
    return requested


def _clip_identity(
    config: EmbedConfig, model_config_json: str, processor_json: str
) -> tuple[str, str]:
    """ "name@version" and a fingerprint of config and weights, so different weights never share cache rows."""
    directory = Path(config.model).expanduser()
    fingerprint = hashlib.sha256((model_config_json + processor_json).encode())
    if directory.is_dir():
        # A local directory has no commit, and two of them can share a name: hash the weights.
        for weights in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
            fingerprint.update(file_digest(weights).encode())
        name, version = directory.name, "local"
    else:
        name, version = (
            config.model,
            hub_commit(config.model, config.revision) or config.revision or "default",
        )
    return f"{name}@{version}", fingerprint.hexdigest()[:12]
