"""Embedding configuration and the registry of known models, as data: importing it loads no model library."""

from __future__ import annotations

from dataclasses import dataclass, field

BASELINE_MODEL = "baseline"
DEFAULT_MODEL = "openai/clip-vit-base-patch32"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
RUNTIMES = ("auto", "torch", "openvino")
# Images per model call when none is given: on the CPU larger batches gain nothing (BENCHMARKS.md section 1);
# on a GPU the batch follows its free memory (core.embedding.clip), within this bound.
CPU_BATCH_SIZE = 16
MAX_GPU_BATCH_SIZE = 512
# Shared by the command line and the Embed page.
PRECISION_HELP = (
    "auto: bf16 where it runs natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU), fp16 autocast on a CUDA GPU "
    "without bf16, kept only if the first batch agrees with fp32, else fp32; bf16 is about twice as fast and "
    "takes half the memory; fp16 needs a CUDA GPU"
)
RUNTIME_HELP = (
    "what runs the image tower: auto is OpenVINO on a CPU where it is installed and precision is auto "
    "(converted once per model, kept only if its first batch agrees with torch fp32), else torch"
)

KNOWN_MODELS = {
    "openai/clip-vit-base-patch32": "CLIP ViT-B/32, 512-d: the fastest CLIP and the default",
    "openai/clip-vit-base-patch16": "CLIP ViT-B/16, 512-d: finer patches, about 4x the compute of B/32, more accurate",
    "openai/clip-vit-large-patch14": "CLIP ViT-L/14, 768-d: about 20x the compute of B/32, the most accurate at 224 px",
    "openai/clip-vit-large-patch14-336": "CLIP ViT-L/14 at 336 px, 768-d: about 40x the compute of B/32, best on small details",
    BASELINE_MODEL: "downscaled pixels, 1728-d: offline and without weights; a floor to compare against, no text",
}


def list_models() -> dict[str, str]:
    """The models this tool knows, with a one-line description each."""
    return dict(KNOWN_MODELS)


@dataclass(frozen=True)
class EmbedConfig:
    """How to turn images and texts into vectors."""

    # Each field's help and choices live in its metadata: the command line builds its options from them.
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": f"Hugging Face CLIP id, local checkpoint directory, or {BASELINE_MODEL!r}"
        },
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": f"images per model call; none: {CPU_BATCH_SIZE} on the CPU, on a GPU as many as a share of its free memory holds (up to {MAX_GPU_BATCH_SIZE}); an interrupted run loses at most one batch"
        },
    )
    precision: str = field(default="auto", metadata={"help": PRECISION_HELP, "choices": PRECISIONS})
    device: str = field(
        default="auto", metadata={"help": "auto picks cuda, then mps, then cpu", "choices": DEVICES}
    )
    runtime: str = field(default="auto", metadata={"help": RUNTIME_HELP, "choices": RUNTIMES})
    revision: str | None = field(
        default=None,
        metadata={"help": "Hub branch, tag or commit of the model; none means the default branch"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"model must be a CLIP id, a local checkpoint directory or {BASELINE_MODEL!r}, got {self.model!r}"
            )
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        # A device left to "auto" is checked once it is chosen, when the model loads.
        if self.device != "auto" and (why := cannot_run(self.runtime, self.precision, self.device)):
            raise ValueError(f"{why}, not on device {self.device!r}; {REMEDIES[why]}")


_FP16_OFF_CUDA = "precision 'fp16' runs on a CUDA GPU"
_OPENVINO_OFF_CPU = "runtime 'openvino' runs on the CPU"
# What to give instead, for each reason cannot_run gives.
REMEDIES = {
    _FP16_OFF_CUDA: "use bf16 or fp32",
    _OPENVINO_OFF_CPU: "use device 'cpu' or runtime 'torch'",
}


def cannot_run(runtime: str, precision: str, device: str) -> str | None:
    """Why `device` ("cpu", "cuda" or "mps") cannot compute with this runtime and precision; None when it can."""
    if precision == "fp16" and device != "cuda":
        return _FP16_OFF_CUDA
    if runtime == "openvino" and device != "cpu":
        return _OPENVINO_OFF_CPU
    return None


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
