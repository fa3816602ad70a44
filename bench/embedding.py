"""Embedding JPEG bytes to unit vectors with a ViT-B/32 CLIP: naive loop, model-only ceiling, the pipeline, bf16, cache."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fixtures import random_clip_checkpoint, write_photos
from bench.report import Section, table
from bench.timing import interleaved, median, median_ratio
from core.embedding.cache import SIDECAR_SUFFIXES, EmbeddingCache
from core.embedding.clip import usable_cores
from core.embedding.config import EmbedConfig
from core.embedding.runner import embed_dataset, load_embedder
from core.io.images import load_image
from core.records import TEST, Dataset, Item

FULL = {
    "photos": 64,
    "naive_photos": 16,
    "batch_sizes": (1, 8, 16, 32, 64),
    "sweep_rounds": 2,
    "rounds": 7,
    "bf16_rounds": 3,
    "runtime_photos": 512,
    "runtime_rounds": 3,
}
QUICK = {
    "photos": 32,
    "naive_photos": 8,
    "batch_sizes": (1, 8, 16, 32),
    "sweep_rounds": 2,
    "rounds": 3,
    "bf16_rounds": 2,
    "runtime_photos": 96,
    "runtime_rounds": 2,
}
# Issue #15: a fresh `embed` with the defaults at this multiple of the fp32 pipeline or more.
DEFAULT_SPEEDUP_TARGET = 1.7


class NaiveClip:
    """The tutorial way: transformers' CLIPProcessor and CLIPModel, one image at a time, fp32."""

    def __init__(self, checkpoint: Path, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.model = CLIPModel.from_pretrained(checkpoint).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(checkpoint)

    def image_tower_parameters(self) -> int:
        towers = (self.model.vision_model, self.model.visual_projection)
        return sum(parameter.numel() for tower in towers for parameter in tower.parameters())

    def embed(self, path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB")
        return self.embed_prepared(
            self.processor(images=image, return_tensors="np")["pixel_values"]
        )[0]

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        """Unit image vectors straight from transformers' get_image_features: the model as shipped."""
        import torch

        with torch.inference_mode():
            output = self.model.get_image_features(
                pixel_values=torch.from_numpy(inputs).to(self.device)
            )
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


# int8 was built and measured on a branch, by hand, and not kept (issue #26 item 3); not rerun by this command.
INT8_NOT_KEPT = (
    "**int8 was measured and is not offered.** OpenVINO's tower quantised to int8 with NNCF (post-training, "
    "calibrated on a dataset's first 16 images) ran 1.8–2.0× OpenVINO bf16 model-only on this AMD EPYC with "
    "AVX512-VNNI, but it did not agree with fp32 as bf16 does: on the 32 images after its calibration images, "
    "median cosine 0.9993–0.9998 against the ≥ 0.9999 bf16 reaches, so its check passed in 0 of 8 fresh runs on "
    "the bench's photos and 0 of 3 on the demo; over a whole demo run it kept 93% of each image's top-5 "
    "neighbours (OpenVINO bf16: 98%). Trying it and refusing it made a fresh run of 512 photos 2.6× slower "
    "(19 s against 7.3 s: the quantisation and a 48-image check). Measured by hand (load average 2–4) on the "
    "bench's random-weight ViT-B/32, as real CLIP weights cannot be downloaded here; with a pretrained tower "
    "the check might pass, which is the measurement still missing."
)


def _rate(images: int, seconds: list[float]) -> float:
    return images / median(seconds)


def _cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.sum(left * right, axis=1)


def _top5_overlap(left: np.ndarray, right: np.ndarray) -> float:
    """Mean share of each row's 5 nearest other rows that two embeddings of the same images agree on."""

    def nearest(vectors):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :5]

    return float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nearest(left), nearest(right))]))


def run(work: Path, quick: bool, device: str = "auto") -> Section:
    """The embedding section on `device` (as EmbedConfig.device: "auto" is a GPU where torch sees one)."""
    import torch

    from core.embedding.clip import _pick_device

    device = _pick_device(device)
    plan = QUICK if quick else FULL
    section = Section(
        "1. Embedding (ViT-B/32, JPEG bytes → unit vector) and 5. Cache", "1, 5. Embedding, cache"
    )
    checkpoint = random_clip_checkpoint(work.parent / "clip-vit-b32-random")
    photos = write_photos(work.parent / "photos", plan["photos"])
    dataset = Dataset("photos", [Item(path.name, TEST, None, path) for path in photos])
    naive = NaiveClip(checkpoint, device)
    # the fp32 rows; bf16 is measured apart
    embedder = load_embedder(EmbedConfig(model=str(checkpoint), precision="fp32", device=device))
    default_batch = embedder.default_batch_size()
    inputs = {
        size: np.random.default_rng(size).standard_normal((size, 3, 224, 224)).astype(np.float32)
        for size in plan["batch_sizes"]
    }

    def model_only(model, size: int, images: int):
        calls = math.ceil(images / size)
        return lambda: [model.embed_prepared(inputs[size]) for _ in range(calls)]

    for model in (naive, embedder):
        # first call allocates; keep it out of the timings
        model_only(model, default_batch, default_batch)()
    n = len(photos)
    sweep = interleaved(
        {size: model_only(naive, size, n) for size in plan["batch_sizes"]}, plan["sweep_rounds"]
    )
    sweep_rates = {
        size: math.ceil(n / size) * size / median(times) for size, times in sweep.items()
    }
    best = max(sweep_rates, key=sweep_rates.get)

    caches: list[EmbeddingCache] = []
    vectors: dict[str, np.ndarray] = {}

    def pipeline():
        path = work / f"cache-{len(caches)}.sqlite"
        for suffix in (
            "",
            *SIDECAR_SUFFIXES,
        ):  # a kept --work-dir must not hand this run a warm cache
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        cache = EmbeddingCache(path)
        caches.append(cache)
        vectors["pipeline"] = embed_dataset(dataset, embedder, cache).embeddings.vectors

    def naive_loop():
        vectors["naive"] = np.stack([naive.embed(path) for path in photos[: plan["naive_photos"]]])

    ceiling_images = math.ceil(n / best) * best
    tower_images = math.ceil(n / default_batch) * default_batch
    main = interleaved(
        {
            "naive": naive_loop,
            "ceiling": model_only(naive, best, n),
            "tower": model_only(embedder, default_batch, n),
            "pipeline": pipeline,
        },
        plan["rounds"],
    )
    rates = {
        "naive": [plan["naive_photos"] / s for s in main["naive"]],
        "ceiling": [ceiling_images / s for s in main["ceiling"]],
        "tower": [tower_images / s for s in main["tower"]],
        "pipeline": [n / s for s in main["pipeline"]],
    }
    tower_difference = float(
        np.abs(embedder.embed_prepared(inputs[best]) - naive.embed_prepared(inputs[best])).max()
    )
    cached_seconds = []
    for cache in caches:
        run_again = embed_dataset(dataset, embedder, cache)
        assert run_again.computed == 0, "the second run must come entirely from the cache"
        cached_seconds.append(run_again.seconds)
        cache.close()

    versus_ceiling = median_ratio(rates["pipeline"], rates["ceiling"])
    versus_naive = median_ratio(rates["pipeline"], rates["naive"])
    versus_own_tower = median_ratio(rates["pipeline"], rates["tower"])
    tower_speedup = median_ratio(rates["tower"], rates["ceiling"])
    agreement = _cosines(vectors["pipeline"][: plan["naive_photos"]], vectors["naive"])
    cache_speedup = median(main["pipeline"]) / median(cached_seconds)

    costs = _per_image_costs(photos, naive, embedder, plan["rounds"])
    model_ms = 1000 / median(rates["ceiling"])

    section.add(
        f"ViT-B/32 architecture (transformers' default `CLIPConfig`, {naive.image_tower_parameters() / 1e6:.1f}M-parameter image tower) with random "
        f"weights, which cost the same compute as trained ones; {n} photo-like 640×480 JPEGs (quality 90, "
        f"gradients, shapes, a fine grating and noise). torch uses {torch.get_num_threads()} threads on "
        f"{usable_cores()} usable cores (`core.embedding.clip` sets this). Every figure is a median over rounds in which "
        f"the contenders ran side by side in rotating order; ratios are medians of per-round ratios.",
        "**Model-only batch sweep** (transformers' `get_image_features` on random tensors, fp32):",
        table(
            ["batch size", "images/s", "vs best"],
            [
                [size, f"{rate:.1f}", f"{rate / sweep_rates[best]:.2f}"]
                for size, rate in sweep_rates.items()
            ],
        ),
        table(
            ["contender", "images/s (median)", "rounds", "what it does"],
            [
                [
                    "(a) naive",
                    f"{median(rates['naive']):.1f}",
                    len(rates["naive"]),
                    "PIL full decode → CLIPProcessor → CLIPModel, one image at a time",
                ],
                [
                    "(b) model-only ceiling",
                    f"{median(rates['ceiling']):.1f}",
                    len(rates["ceiling"]),
                    f"transformers' `get_image_features`, random tensors, batch {best} (best of the sweep)",
                ],
                [
                    "(b′) the project's image tower",
                    f"{median(rates['tower']):.1f}",
                    len(rates["tower"]),
                    f"`ClipEmbedder.embed_prepared` (last layer for the CLS token only), random tensors, batch {default_batch}",
                ],
                [
                    "(c) pipeline",
                    f"{median(rates['pipeline']):.1f}",
                    len(rates["pipeline"]),
                    f"`embed_dataset`, default settings (batch {default_batch}, fp32), files → SQLite cache",
                ],
                [
                    "(c) again, cached",
                    f"{n / median(cached_seconds):.0f}",
                    len(cached_seconds),
                    "same files, same cache: hashing and one SQLite read",
                ],
            ],
        ),
        "**Per-image decode and preprocessing**, one thread, against the model's time per image at the ceiling "
        f"({model_ms:.1f} ms):",
        table(
            ["path", "ms per image", "share of model time"],
            [[name, f"{ms:.2f}", f"{ms / model_ms:.1%}"] for name, ms in costs.items()],
        ),
        f"Agreement of the pipeline (draft decode + fast preprocessing) with the naive path on the same "
        f"images: cosine median {np.median(agreement):.5f}, min {agreement.min():.5f}.",
        f"Why (c) can pass (b): the image vector is the CLS token after the last encoder layer, so "
        f"`core.embedding.clip` runs that layer for the CLS query alone (keys and values still for all 50 tokens), "
        f"6.6% fewer FLOPs. On the same random tensors its unit vectors differ from transformers' by at "
        f"most {tower_difference:.1e}; a unit test holds the two equal. (b′) runs {tower_speedup:.2f}× "
        f"(b) here, and the pipeline keeps {versus_own_tower:.0%} of (b′): decoding and preprocessing "
        f"run in two threads beside the model.",
    )
    fast_share = costs["draft decode + fast preprocessing (pipeline)"] / model_ms
    section.check(
        "(c) pipeline ≥ 0.9 × (b) model-only ceiling, fp32",
        f"{versus_ceiling:.2f}×",
        versus_ceiling >= 0.9,
    )
    section.check("(c) pipeline ≥ 1.8 × (a) naive", f"{versus_naive:.2f}×", versus_naive >= 1.8)
    section.check(
        "decode + preprocessing < 1/10 of the model's time", f"{fast_share:.1%}", fast_share < 0.1
    )
    section.check(
        "fast path agrees with the processor (cosine ≥ 0.99)",
        f"median {np.median(agreement):.4f}, min {agreement.min():.4f}",
        bool(agreement.min() >= 0.99),
    )
    section.check(
        "second embed of the same data ≥ 100× faster", f"{cache_speedup:.0f}×", cache_speedup >= 100
    )
    if versus_ceiling < 0.9 or versus_naive < 1.8:
        ceiling_over_naive = median_ratio(rates["ceiling"], rates["naive"])
        section.add(
            f"**A target missed in this run, and what was tried.** The pipeline can at best reach the "
            f"ceiling, and the ceiling is only {ceiling_over_naive:.2f}× the naive loop here, so ≥ 1.8× "
            f"needs the pipeline at {1.8 / ceiling_over_naive:.0%} of the ceiling or more. Decoding and "
            f"preprocessing still cost {fast_share:.1%} of the CPU time the model needs, and with the "
            f"model keeping both cores busy that work cannot hide behind it: about "
            f"{1 / (1 + fast_share):.0%} of the ceiling is what two cores allow. A busy neighbour on "
            f"this shared machine moves both ratios by several percent between runs. Kept: the "
            f"CLS-only last layer above. Tried while building the pipeline, side by side (figures "
            f"from then, not rerun by this command): "
            f"`torch.jit.trace` + `freeze` (no gain: 18.3 vs 18.6 images/s), eager attention instead of "
            f"SDPA (slower, 18.1), two model threads of one torch thread each on alternate batches (+3-7% "
            f"with an even number of batches, worse otherwise: not adopted), one instead of two decode "
            f"threads and lower-priority decode threads (no difference beyond the noise: kept two). Of "
            f"everything tried, only the CLS-only last layer and bf16 (below) made the model itself faster."
        )
    _bf16(section, checkpoint, dataset, embedder, vectors["pipeline"], inputs, best, plan)
    _runtimes(section, checkpoint, work, plan, device)
    return section


def _per_image_costs(
    photos: list[Path], naive: NaiveClip, embedder, rounds: int
) -> dict[str, float]:
    """Milliseconds per image of each way from file to model input, measured side by side."""
    processor = naive.processor.image_processor

    def full_decode_and_processor():
        for path in photos:
            processor(images=Image.open(path).convert("RGB"), return_tensors="pt")

    def draft_and_fast():
        for path in photos:
            embedder.prepare_image(load_image(path, draft_size=embedder.draft_size))

    def full_decode_and_fast():
        for path in photos:
            embedder.prepare_image(load_image(path))

    timings = interleaved(
        {
            "full decode + CLIPProcessor (naive)": full_decode_and_processor,
            "full decode + fast preprocessing": full_decode_and_fast,
            "draft decode + fast preprocessing (pipeline)": draft_and_fast,
        },
        rounds,
    )
    return {name: 1000 * median(times) / len(photos) for name, times in timings.items()}


def _bf16(
    section: Section,
    checkpoint: Path,
    dataset: Dataset,
    fp32_embedder,
    fp32_vectors,
    inputs,
    best: int,
    plan,
) -> None:
    half = load_embedder(
        EmbedConfig(model=str(checkpoint), precision="bf16", device=fp32_embedder.device)
    )
    n = len(dataset.items)
    calls = math.ceil(n / best)
    half.embed_prepared(inputs[best])
    produced: dict[str, np.ndarray] = {}

    def half_pipeline():
        produced["bf16"] = embed_dataset(dataset, half, None).embeddings.vectors

    def full_pipeline():
        embed_dataset(dataset, fp32_embedder, None)

    times = interleaved(
        {
            "fp32 model": lambda: [
                fp32_embedder.embed_prepared(inputs[best]) for _ in range(calls)
            ],
            "bf16 model": lambda: [half.embed_prepared(inputs[best]) for _ in range(calls)],
            "fp32 pipeline": full_pipeline,
            "bf16 pipeline": half_pipeline,
        },
        plan["bf16_rounds"],
    )
    model_speedup = median_ratio(times["fp32 model"], times["bf16 model"])
    pipeline_speedup = median_ratio(times["fp32 pipeline"], times["bf16 pipeline"])
    cosines = _cosines(fp32_vectors, produced["bf16"])
    overlap = _top5_overlap(fp32_vectors, produced["bf16"])
    between_photos = fp32_vectors @ fp32_vectors.T
    typical = float(np.median(between_photos[~np.eye(n, dtype=bool)]))
    section.add(
        '**bf16** (`EmbedConfig(precision="bf16")`), side by side with fp32:',
        table(
            ["", "fp32 images/s", "bf16 images/s", "bf16 speed-up"],
            [
                [
                    f"model only, batch {best}",
                    f"{calls * best / median(times['fp32 model']):.1f}",
                    f"{calls * best / median(times['bf16 model']):.1f}",
                    f"{model_speedup:.2f}×",
                ],
                [
                    "pipeline, default settings",
                    f"{n / median(times['fp32 pipeline']):.1f}",
                    f"{n / median(times['bf16 pipeline']):.1f}",
                    f"{pipeline_speedup:.2f}×",
                ],
            ],
        ),
        f"Agreement with fp32 on the same {n} photos: cosine median {np.median(cosines):.4f} (min "
        f"{cosines.min():.4f}); each photo's 5 nearest other photos agree {overlap:.0%}. With random "
        f"weights different photos sit closer together than a trained model puts them (median cosine "
        f"between two photos {typical:.2f} here), so near-ties are commoner and the overlap is, if "
        f"anything, a harsher test than it would be with trained weights.",
    )
    holds = bool(np.median(cosines) >= 0.99)
    section.check(
        'bf16: speed-up reported; median cosine to fp32 ≥ 0.99 (offered as `precision="bf16"`)',
        f"{model_speedup:.2f}× (model), cosine {np.median(cosines):.4f}, top-5 overlap {overlap:.0%}",
        holds,
    )


def _runtimes(section: Section, checkpoint: Path, work: Path, plan, device: str) -> None:
    """Every precision and runtime the embedder offers, and the default, as whole fresh runs side by side with torch fp32."""
    import shutil

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.embedding.clip import OPENVINO_FOLDER, _image_features
    from core.paths import workspace_home

    photos = write_photos(work.parent / f"photos-{plan['runtime_photos']}", plan["runtime_photos"])
    dataset = Dataset("photos", [Item(path.name, TEST, None, path) for path in photos])
    n, rounds = len(photos), plan["runtime_rounds"]
    configs = {
        "torch fp32": EmbedConfig(model=str(checkpoint), precision="fp32", device=device),
        "torch bf16": EmbedConfig(model=str(checkpoint), precision="bf16", device=device),
        **(
            {
                "OpenVINO bf16 (checked)": EmbedConfig(
                    model=str(checkpoint), precision="bf16", runtime="openvino"
                )
            }
            if device == "cpu"
            else {}
        ),
        "default: precision and runtime auto": EmbedConfig(model=str(checkpoint), device=device),
    }
    converted = workspace_home() / OPENVINO_FOLDER
    shutil.rmtree(converted, ignore_errors=True)
    started = time.perf_counter()
    first = load_embedder(configs["default: precision and runtime auto"])
    embed_dataset(Dataset("one batch", dataset.items[: first.default_batch_size()]), first, None)
    first_run_seconds = time.perf_counter() - started
    # A check settles once per embedder: every round gets fresh ones, loaded before the clock starts.
    embedders = [
        {name: load_embedder(config) for name, config in configs.items()} for _ in range(rounds)
    ]
    produced: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}

    def whole_run(name: str):
        def run() -> None:
            embedder = embedders[len(times_so_far[name])][name]
            produced[name] = embed_dataset(dataset, embedder, None).embeddings.vectors
            notes[name] = embedder.precision_note
            times_so_far[name].append(None)

        return run

    times_so_far: dict[str, list] = {name: [] for name in configs}
    times = interleaved({name: whole_run(name) for name in configs}, rounds)
    reference = produced["torch fp32"]
    rows = []
    for name in configs:
        cosines = _cosines(reference, produced[name])
        rows.append(
            [
                name,
                f"{n / median(times[name]):.1f}",
                f"{median_ratio(times['torch fp32'], times[name]):.2f}×",
                f"{np.median(cosines):.5f} / {cosines.min():.5f}",
                f"{_top5_overlap(reference, produced[name]):.0%}",
                notes[name].removeprefix("precision: "),
            ]
        )
    default_speedup = median_ratio(
        times["torch fp32"], times["default: precision and runtime auto"]
    )

    model = first._model
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _image_features(model, torch.zeros((1, 3, 224, 224), device=first.device))
    flops_per_image = counter.get_total_flops()
    peaks = {
        dtype: _matmul_flops_per_second(dtype, first.device)
        for dtype in (torch.float32, torch.bfloat16)
    }
    section.add(
        f"**Precisions and runtimes, whole runs** (`embed_dataset`, {n} photos, no cache, a fresh embedder per run so "
        f"every checked backend pays its first-batch check; {rounds} rounds side by side). Cosine and top-5 are "
        f"against torch fp32 on the same photos:",
        table(
            [
                "backend",
                "images/s",
                "vs torch fp32",
                "cosine median / min",
                "top-5 agreement",
                "what the run said",
            ],
            rows,
        ),
        f"The first run of the default on a model ever (one batch, the OpenVINO conversion included, then kept under "
        f"the workspace home) took {first_run_seconds:.1f} s. ONNX Runtime was measured against these once, by hand, "
        f"on the same tower (batch 32, random tensors, a busy machine): fp32 0.71× and dynamic int8 1.40× torch bf16, "
        f"against OpenVINO's 3.0×; it is not kept (OpenVINO clears the 1.3×-over-bf16 bar by far, ONNX Runtime barely). "
        f"{INT8_NOT_KEPT}",
        f"**The ceiling, from this machine's measured matrix-multiply rate** (torch on {first.device}, {torch.get_num_threads()} CPU threads, "
        f"2048² matrices): fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s. "
        f"The project's image tower costs {flops_per_image / 1e9:.2f} GFLOP per image (torch's FLOP counter), so "
        f"at those rates the arithmetic alone allows {peaks[torch.float32] / flops_per_image:.0f} images/s in fp32 "
        f"and {peaks[torch.bfloat16] / flops_per_image:.0f} in bf16.",
    )
    section.check(
        f"a fresh run with the defaults ≥ {DEFAULT_SPEEDUP_TARGET} × the torch fp32 pipeline (issue #15)",
        f"{default_speedup:.2f}×",
        default_speedup >= DEFAULT_SPEEDUP_TARGET,
    )
    if "OpenVINO bf16 (checked)" in times:
        openvino_over_bf16 = median_ratio(times["torch bf16"], times["OpenVINO bf16 (checked)"])
        section.check(
            "OpenVINO ≥ 1.3 × torch bf16 with the same checks, or it is not kept",
            f"{openvino_over_bf16:.2f}×",
            openvino_over_bf16 >= 1.3,
        )


def _matmul_flops_per_second(dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    import torch

    left, right = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    # GPU work is asynchronous
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    left @ right  # first call allocates and picks kernels
    wait()
    started = time.perf_counter()
    for _ in range(repeats):
        left @ right
    wait()
    return 2 * size**3 * repeats / (time.perf_counter() - started)
