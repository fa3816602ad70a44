"""Peak memory of the whole workflow on 16k images, and of the streamed embed at 4k and 16k, each in a fresh process that reports its own peak."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.fixtures import photo_jpeg, quiet_transformers, random_clip_checkpoint, write_photos
from bench.report import Section, seconds, table
from bench.timing import peak_rss_mb, run_python
from core.embedding.runner import ROWS_PER_PART

FULL = {"classes": 1000, "per_class": 3, "test": 13_000}
QUICK = {"classes": 200, "per_class": 3, "test": 1_800}
# A quarter of each: `embed --out FOLDER` should peak about as high on it as on the whole.
QUARTER = {
    "full": {"classes": 250, "per_class": 3, "test": 3_250},
    "quick": {"classes": 50, "per_class": 3, "test": 450},
}
# Peak RSS of the streamed embed at 4x the images, as a share of its peak at 1x: "about equal".
STREAM_GROWTH_LIMIT = 1.10
TARGET_MB = 4096
THUMBNAIL = (
    160,
    120,
)  # workflow images are small: the decode cost is section 1's business, not memory's
CLIP_PHOTOS = 64


def _write_dataset(folder: Path, plan) -> int:
    """train/<class>/*.jpg and test/<class or -1>/*.jpg, 30% of test distractors; made once."""
    marker = folder / "complete"
    if marker.exists():
        return int(marker.read_text())
    rng = np.random.default_rng(0)
    count = 0
    for split, n, classes in (
        (
            "train",
            plan["classes"] * plan["per_class"],
            np.repeat(np.arange(plan["classes"]), plan["per_class"]),
        ),
        ("test", plan["test"], rng.integers(0, plan["classes"], plan["test"])),
    ):
        labels = [f"class-{c}" for c in classes]
        if split == "test":
            labels = ["-1" if rng.random() < 0.3 else label for label in labels]
        for index, label in enumerate(labels[:n]):
            path = folder / split / label / f"{split}-{index:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo_jpeg(rng, THUMBNAIL))
            count += 1
    marker.write_text(str(count))
    return count


def _dataset(work: Path, plan) -> tuple[Path, int]:
    dataset = work / f"dataset-{plan['classes']}x{plan['per_class']}-{plan['test']}"
    return dataset, _write_dataset(dataset, plan)


def run(work: Path, quick: bool) -> Section:
    plan = QUICK if quick else FULL
    section = Section("6. Memory: peak resident memory of the whole workflow", "6. Memory")
    dataset, n_images = _dataset(work, plan)
    home = work / "home"
    # the workflow starts from an empty cache, as a first run does
    shutil.rmtree(home, ignore_errors=True)
    workflow = run_python(["-m", "bench.memory", "workflow", str(dataset), str(home)])
    checkpoint = random_clip_checkpoint(work.parent / "clip-vit-b32-random")
    photos = write_photos(work.parent / "photos", CLIP_PHOTOS)
    clip = run_python(["-m", "bench.memory", "clip", str(checkpoint), str(photos[0].parent)])
    workflow_mb, clip_mb = float(workflow["PEAK_MB"]), float(clip["PEAK_MB"])
    stages = [key.removeprefix("STAGE_") for key in workflow if key.startswith("STAGE_")]
    section.add(
        f"Two fresh processes, each printing its own peak resident memory (`VmHWM`; `getrusage`'s ru_maxrss would report the parent's peak, which Linux carries across exec). "
        f"The workflow process runs everything on {n_images:,} images ({plan['classes'] * plan['per_class']:,} "
        f"train, {plan['test']:,} test, {THUMBNAIL[0]}×{THUMBNAIL[1]} JPEGs): load the folder, embed with "
        f"the **baseline** embedder (1,728-d vectors, larger than CLIP's 512-d; ViT-B/32 on 16k images "
        f"would take a quarter of an hour here), cache in SQLite, analyse (search, scores, sweep, MAP@5), "
        f"leave-one-out train scores, DBSCAN, the default UMAP map, Parquet and submission export. The "
        f"second process loads the ViT-B/32 embedder and embeds {CLIP_PHOTOS} photos, which is what the "
        f"CLIP model adds to any workflow.",
        table(
            ["stage of the workflow", "seconds"],
            [
                [stage.replace("_", " "), seconds(float(workflow[f"STAGE_{stage}"]))]
                for stage in stages
            ],
        ),
        table(
            ["process", "peak RSS"],
            [
                [
                    f"whole workflow, baseline embedder, {n_images:,} images",
                    f"{workflow_mb:,.0f} MB",
                ],
                [f"ViT-B/32 embedder loaded, {CLIP_PHOTOS} photos embedded", f"{clip_mb:,.0f} MB"],
                ["upper bound for the CLIP workflow (sum)", f"{workflow_mb + clip_mb:,.0f} MB"],
            ],
        ),
        f"No step allocates a {n_images:,} × {n_images:,} matrix ({n_images**2 * 4 / 2**30:.1f} GB in "
        f"float32), by construction: search is FAISS top-k against train; DBSCAN gets radius neighbours, "
        f"which scikit-learn computes in chunks of its working memory (1 GB by default, most of this "
        f"peak); UMAP takes each row's nearest train rows from FAISS's brute-force top-k, which scans "
        f"in blocks; trustworthiness is only ever computed on a sample.",
    )
    _streamed_embed(
        section,
        work,
        [_dataset(work, QUARTER["quick" if quick else "full"]), (dataset, n_images)],
        quick,
    )
    total = workflow_mb + clip_mb
    if quick:
        section.check(
            f"peak RSS of the whole workflow (target at 16k; quick mode ran {n_images:,} images)",
            f"{total:,.0f} MB (upper bound)",
            None,
        )
    else:
        section.check(
            f"peak RSS of the whole workflow on {n_images:,} images ≤ 4 GB",
            f"{total:,.0f} MB (upper bound)",
            total <= TARGET_MB,
        )
    return section


def _streamed_embed(
    section: Section, work: Path, datasets: list[tuple[Path, int]], quick: bool
) -> None:
    """Peak RSS of `python -m core embed` into a folder of part files and into one file, each size in a fresh process with an empty cache.

    Quick mode's sizes are below one part's rows, so it reports without a verdict.
    """
    peaks: dict[str, list[float]] = {"folder": [], "file": []}
    runs: dict[str, list[float]] = {"folder": [], "file": []}
    for dataset, _ in datasets:
        for kind, out_name in (("folder", "streamed"), ("file", "whole.parquet")):
            scratch = work / "embed-runs"
            # an empty cache and no earlier parts: every vector is computed
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            command = ["-m", "bench.memory", "embed", str(dataset), str(scratch / out_name)]
            measured = run_python(command, env={"RETRIEVAL_LAB_HOME": str(scratch / "home")})
            peaks[kind].append(float(measured["PEAK_MB"]))
            runs[kind].append(float(measured["SECONDS"]))
    sizes = [n for _, n in datasets]
    growth = peaks["folder"][1] / peaks["folder"][0]
    section.add(
        f"**Streamed embedding.** `python -m core embed DATASET --model baseline --out OUT` in a fresh process per run "
        f"with an empty cache, at {sizes[0]:,} and {sizes[1]:,} images (1,728-d baseline vectors: the largest rows "
        f"the project makes, and no model time). Into a folder the vectors go to a part file every "
        f"{ROWS_PER_PART:,} rows and only the current rows are held; into one file they are all held until it is written.",
        table(
            [
                "embed --out",
                *(f"{n:,} images: peak RSS, time" for n in sizes),
                f"peak at {sizes[1]:,} / at {sizes[0]:,}",
            ],
            [
                [
                    "folder of part files (streamed, resumable)",
                    *(
                        f"{mb:,.0f} MB, {seconds(t)}"
                        for mb, t in zip(peaks["folder"], runs["folder"])
                    ),
                    f"{growth:.2f}×",
                ],
                [
                    "one file `x.parquet` (in memory)",
                    *(f"{mb:,.0f} MB, {seconds(t)}" for mb, t in zip(peaks["file"], runs["file"])),
                    f"{peaks['file'][1] / peaks['file'][0]:.2f}×",
                ],
            ],
        ),
    )
    section.check(
        f"peak RSS of embed --out FOLDER at {sizes[1]:,} images within {STREAM_GROWTH_LIMIT:.2f}× of {sizes[0]:,}",
        f"{peaks['folder'][1]:,.0f} MB vs {peaks['folder'][0]:,.0f} MB ({growth:.2f}×)",
        None if quick else growth <= STREAM_GROWTH_LIMIT,
    )


def _embed(dataset: Path, out: Path) -> None:
    from core.__main__ import main

    started = time.perf_counter()
    if main(["embed", str(dataset), "--model", "baseline", "--out", str(out)]) != 0:
        raise SystemExit(f"embed {dataset} --out {out} failed")
    print(f"SECONDS={time.perf_counter() - started}")
    print(f"PEAK_MB={peak_rss_mb()}")


def _workflow(dataset: Path, home: Path) -> None:
    from core.analysis.loading import load_embeddings
    from core.analysis.pipeline import analyse
    from core.embedding.cache import EmbeddingCache
    from core.embedding.config import BASELINE_MODEL, EmbedConfig
    from core.io.parquet import write_embeddings
    from core.maps.projection import (
        PROJECTIONS_FOLDER,
        ProjectionCache,
        ProjectionConfig,
        project,
        projection_key,
    )
    from core.prediction.predict import write_submission

    home.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal started
        print(f"STAGE_{name}={time.perf_counter() - started}")
        started = time.perf_counter()

    with EmbeddingCache(home / "embeddings.sqlite") as cache:
        loaded = load_embeddings(dataset, EmbedConfig(model=BASELINE_MODEL), cache)
    stage("load_and_embed")
    analysis = analyse(loaded.embeddings)
    analysis.report()
    analysis.sweep.best_map_threshold()
    stage("analyse")
    # Lazy properties: reading them computes what the Distractors page computes on a first visit.
    _ = analysis.train_loo_scores, analysis.mean_precision
    stage("leave-one-out_train_scores")
    analysis.dbscan()
    stage("DBSCAN")
    train, test = analysis.train.vectors, analysis.test.vectors
    ProjectionCache(home / PROJECTIONS_FOLDER).put(
        projection_key(train, test, ProjectionConfig()), project(train, test)
    )
    stage("UMAP_map_(numba_compiles_in_this_fresh_process)")
    write_embeddings(home / "embeddings.parquet", loaded.embeddings)
    write_submission(home / "submission.csv", analysis.test.ids, analysis.predictions())
    stage("export")
    print(f"PEAK_MB={peak_rss_mb()}")


def _clip(checkpoint: Path, photos: Path) -> None:
    from core.embedding.config import EmbedConfig
    from core.embedding.runner import embed_dataset, load_embedder
    from core.records import TEST, Dataset, Item

    items = [
        Item(path.name, TEST, None, path) for path in sorted(photos.glob("*.jpg"))[:CLIP_PHOTOS]
    ]
    embed_dataset(Dataset("photos", items), load_embedder(EmbedConfig(model=str(checkpoint))))
    print(f"PEAK_MB={peak_rss_mb()}")


if __name__ == "__main__":
    quiet_transformers()
    mode, *paths = sys.argv[1:]
    {"workflow": _workflow, "clip": _clip, "embed": _embed}[mode](*map(Path, paths))
