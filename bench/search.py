"""Top-5 search: FAISS exact vs numpy and vs the bf16 screen at the product's sizes, the first analysis at 130k, cost on uneven classes, and the approximate index at 1M."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench.fixtures import EmbeddingSpace, retrieval_embeddings
from bench.report import Section, seconds, table
from bench.timing import (
    AMX_BF16_GFLOPS,
    interleaved,
    matmul_rates,
    median,
    median_ratio,
    peak_rss_mb,
    product_flop,
    run_python,
)
from core.analysis.pipeline import search_and_rank, search_width
from core.embedding.clip import usable_cores
from core.prediction.config import PredictConfig
from core.prediction.predict import DEEPER_SEARCH_STAGE, first_search_depth
from core.progress import Watch
from core.records import TEST, TRAIN
from core.search.index import EXACT_UP_TO, VectorIndex
from core.search.screen import SCREEN_MARGIN, load_compiled, queries_per_block

# The dashboard's sizes (test items, train classes of 3), as bench/ui.py generates them.
SCREEN_SIZES = {"13k": (13_000, 1_000), "130k": (100_000, 10_000)}
FULL = {
    "rounds": 5,
    "large": 1_000_000,
    "queries": 1000,
    "singles": 20,
    "kinds_at": 100_000,
    "screen_sizes": SCREEN_SIZES,
    "analyses": 3,
}
QUICK = {
    "rounds": 3,
    "large": 200_000,
    "queries": 500,
    "singles": 10,
    "kinds_at": None,
    "screen_sizes": {"13k": SCREEN_SIZES["13k"]},
    "analyses": 0,
}
# Issue #12's uneven case: 20k train of 64 dims, half of it one class, 5k queries; the balanced
# twin has the same vectors in classes of 20. Each runs in a fresh process for its own peak memory.
BALANCE = {"train": 20_000, "queries": 5_000, "dim": 64, "class_size": 20}
K = 5
RECALL_TARGET, SPEEDUP_TARGET = 0.95, 10.0
# the uneven case may take at most this many times the balanced one's time and memory
BALANCE_TARGET = 2.0
# The screened search's GFLOP/s at least this share of the bf16 product's alone, and the first
# analysis at 130k at most this many times its search's arithmetic floor (issue #26).
PRODUCT_SHARE_TARGET, FLOOR_TARGET = 0.5, 2.0


def _numpy_top_k(train: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarities = queries @ train.T
    top = np.argpartition(-similarities, k, axis=1)[:, :k]
    top_similarities = np.take_along_axis(similarities, top, 1)
    order = np.argsort(-top_similarities, axis=1)
    return np.take_along_axis(top_similarities, order, 1), np.take_along_axis(top, order, 1)


def _recall(exact: np.ndarray, approximate: np.ndarray) -> np.ndarray:
    """Per query: the share of the exact top-k that the approximate search found."""
    return np.array([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(exact, approximate)])


def run(work: Path, quick: bool) -> Section:
    plan = QUICK if quick else FULL
    section = Section(
        "3. Search: exact top-5, and an approximate index past a million vectors", "3. Search"
    )
    _product_size(section, plan)
    _screened(section, plan)
    if plan["analyses"]:
        _first_analysis(section, work, plan["analyses"])
    _class_balance(section)
    _large(section, plan)
    if plan["kinds_at"]:
        _kinds(section, plan)
    return section


def _product_size(section: Section, plan) -> None:
    embeddings = retrieval_embeddings(13_000)
    train, test = embeddings.subset(TRAIN).vectors, embeddings.subset(TEST).vectors
    found = {}

    def with_faiss():
        found["faiss"] = VectorIndex(train).search(test, K)

    def with_numpy():
        found["numpy"] = _numpy_top_k(train, test, K)

    timings = interleaved({"faiss": with_faiss, "numpy": with_numpy}, plan["rounds"])
    same = np.allclose(found["faiss"].similarities, found["numpy"][0], atol=1e-5)
    section.add(
        f"**Exact top-{K}, {len(test):,} queries × {len(train):,} train × 512-d** (synthetic CLIP-like "
        f'vectors; `VectorIndex` with kind "auto", which is exact below {EXACT_UP_TO:,} vectors; '
        f"index build included):",
        table(
            ["method", "median time", "speed-up"],
            [
                [
                    "numpy brute force (matmul, argpartition, sort)",
                    seconds(median(timings["numpy"])),
                    "1.0×",
                ],
                [
                    "FAISS IndexFlatIP (`core.search.index.VectorIndex`)",
                    seconds(median(timings["faiss"])),
                    f"{median_ratio(timings['numpy'], timings['faiss']):.1f}×",
                ],
            ],
        ),
        f"Both return the same top-{K} similarities: {same}.",
    )
    section.check(
        "FAISS exact top-5, 13k × 3k, vs numpy",
        f"{seconds(median(timings['faiss']))} vs {seconds(median(timings['numpy']))}",
        None,
    )


def _bf16_product(train: np.ndarray, test: np.ndarray):
    """The screen's arithmetic alone: every test row times every train row in bf16, in the screen's blocks, no selection."""
    import torch

    columns = torch.from_numpy(train).bfloat16().T.contiguous()
    queries = torch.from_numpy(test.copy()).bfloat16()
    block = queries_per_block(len(train))
    scores = torch.empty((block, len(train)), dtype=torch.bfloat16)

    def run():
        for start in range(0, len(queries), block):
            part = queries[start : start + block]
            torch.matmul(part, columns, out=scores[: len(part)])

    return run


def _flat_and_screened(size: str, n_test: int, n_classes: int, rounds: int) -> tuple[list, tuple]:
    """FAISS flat, the screened exact search and the bf16 product alone on one size, side by side: the table row and its check."""
    embeddings = retrieval_embeddings(n_test, n_classes)
    train, test = embeddings.subset(TRAIN).vectors, embeddings.subset(TEST).vectors
    found, indexes = {}, []

    def flat():
        index = faiss.IndexFlatIP(train.shape[1])
        index.add(train)
        found["flat"] = index.search(test, K)

    def screened():
        indexes.append(VectorIndex(train))
        found["screened"] = indexes[-1].search(test, K)

    timings = interleaved(
        {"flat": flat, "screened": screened, "product": _bf16_product(train, test)}, rounds
    )
    gflop = product_flop(len(test), len(train), train.shape[1]) / 1e9
    similarities, indices = found["flat"]
    ours = found["screened"]
    recall = _recall(indices, ours.indices).mean()
    # Rows that differ only where FAISS and the re-rank round a tie differently (last bits).
    differing = (ours.indices != indices).any(axis=1)
    only_ties = bool(np.allclose(ours.similarities, similarities, atol=1e-6))
    index = indexes[-1]
    fallback = index.rechecked_queries / index.screened_queries if index.screened_queries else None
    ratio = median_ratio(timings["flat"], timings["screened"])
    share = (
        median_ratio(timings["product"], timings["screened"]) if index.screened_queries else None
    )
    row = [
        f"{size}: {len(test):,} × {len(train):,}",
        seconds(median(timings["flat"])),
        seconds(median(timings["screened"])),
        f"{ratio:.2f}×",
        seconds(median(timings["product"])),
        f"{gflop / median(timings['screened']):,.0f}"
        + ("" if share is None else f" ({share:.0%} of the product's)"),
        f"{recall:.6f} ("
        + (
            f"{int(differing.sum())} rows differ" + (", all at float ties" if only_ties else "")
            if differing.any()
            else "identical"
        )
        + ")",
        "not screened (FAISS: too few rows per candidate)"
        if fallback is None
        else f"{fallback:.2%}",
    ]
    return row, (size, timings, ratio, recall, only_ties, fallback, share)


def _screened(section: Section, plan) -> None:
    """IndexFlatIP on its own against the exact index as it now runs (bf16 screen where it pays), side by side."""
    rows, checks = [], []
    load = os.getloadavg()[0]
    load_compiled().result()
    for size, (n_test, n_classes) in plan["screen_sizes"].items():
        row, check = _flat_and_screened(size, n_test, n_classes, plan["rounds"])
        rows.append(row)
        checks.append(check)
    n_test, n_classes = list(plan["screen_sizes"].values())[-1]
    rates = matmul_rates(3 * n_classes)
    flop = product_flop(n_test, 3 * n_classes, 512)
    section.add(
        f"**Exact top-{K} with the bf16 screen** (`core.search.screen`): the same search by FAISS IndexFlatIP alone "
        "(fp32, as before) and by `VectorIndex` as it now runs: where bf16 is "
        "multiplied natively (AMX or AVX512-BF16 among the CPU's flags) and the rows are many per candidate, "
        f"torch multiplies the queries by the centred rows in bf16, keeps each query's top k + {SCREEN_MARGIN} rows, "
        "re-ranks them in fp32 and certifies that no row left out could beat the k-th (a derived bound on the bf16 "
        "error); queries it cannot certify are searched "
        "again with FAISS. Each block of queries makes one bf16 product (`core.search.screen.queries_per_block`); "
        "each query's best screened scores are chosen and re-ranked by compiled kernels (`core.search.compiled`, "
        "numba), loaded here before the first search as a dashboard server loads them at its start (a command-line "
        "run loads them itself from 10,000 train rows, and searches with torch.topk until they are ready). Index "
        "build included; synthetic CLIP-like 512-d vectors of the "
        "dashboard bench's shape. \"bf16 product alone\" is the screen's arithmetic without selection, re-rank or "
        "certificate (the same products in the same blocks), timed in turn with the two searches: the screened "
        "search's GFLOP/s (2·test·train·512 FLOP over its time) as a share of the product's is how close the search "
        f"comes to this machine's bf16 rate. Load average {load:.1f} on the {usable_cores()} usable cores when this "
        "started: other processes on the cores slow every contender, and not evenly.",
        table(
            [
                "size (test × train)",
                "FAISS flat",
                "screened exact",
                "speed-up",
                "bf16 product alone",
                "screened GFLOP/s",
                f"recall@{K} vs FAISS",
                "searched again with FAISS",
            ],
            rows,
        ),
        f"torch's product at the screen's block shape against {3 * n_classes:,} rows, best of 5 in this run: "
        f"{rates['bf16']:,.0f} GFLOP/s in bf16, {rates['fp32']:,.0f} GFLOP/s in fp32 "
        f"({rates['bf16'] / rates['fp32']:.1f}×). The largest search above ({flop / 1e12:.2f} TFLOP) has an arithmetic "
        f"floor of {seconds(flop / rates['bf16'] / 1e9)} in bf16 and {seconds(flop / rates['fp32'] / 1e9)} in fp32 "
        f"here; on the Intel Xeon with AMX these benchmarks were first made on (bf16 at {AMX_BF16_GFLOPS:,} GFLOP/s) "
        f"it would be {seconds(flop / AMX_BF16_GFLOPS / 1e9)}.",
    )
    for size, timings, ratio, recall, only_ties, fallback, share in checks:
        section.check(
            f"exact top-5 at {size}: bf16 screen + fp32 re-rank vs FAISS flat, results equal up to float ties",
            f"{seconds(median(timings['screened']))} vs {seconds(median(timings['flat']))} ({ratio:.2f}×), "
            f"recall@5 {recall:.6f}"
            + ("" if fallback is None else f", {fallback:.2%} searched again"),
            only_ties,
        )
        # issue #26's target for the product's share is the 130k search's; smaller ones are in the table
        if share is not None and size == checks[-1][0]:
            section.check(
                f"exact top-5 at {size}: screened search ≥ {PRODUCT_SHARE_TARGET:.0%} of the bf16 product's GFLOP/s",
                f"{share:.0%}",
                share >= PRODUCT_SHARE_TARGET,
            )


def _first_analysis(section: Section, work: Path, rounds: int) -> None:
    """The whole first analysis at 130k in fresh processes, with FAISS alone and with the screen, side by side."""
    from core.io.parquet import write_embeddings

    n_test, n_classes = SCREEN_SIZES["130k"]
    load = os.getloadavg()[0]
    path = work / "130k.parquet"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_embeddings(path, retrieval_embeddings(n_test, n_classes))
    runs: dict[str, list[dict[str, float]]] = {"flat": [], "screened": []}
    for round_number in range(rounds):
        order = list(runs) if round_number % 2 == 0 else list(runs)[::-1]
        for search in order:
            found = run_python(["-m", "bench.search", "first-analysis", search, str(path)])
            runs[search].append({key: float(value) for key, value in found.items()})
    steps = [
        ("analysis", "whole first analysis (`analyse`)"),
        ("search", "test → train search (`retrieve`)"),
        ("leave_one_out", "train leave-one-out scores"),
    ]
    floors = ("bf16_floor", "fp32_floor", "bf16_gflops", "fp32_gflops")
    figures = {
        search: {step: median([run[step] for run in found]) for step in [*dict(steps), *floors]}
        for search, found in runs.items()
    }
    # Every process measured the product's rate after its analysis: the floor is theirs, pooled.
    floor = {
        name: median([run[name] for found in runs.values() for run in found]) for name in floors
    }
    # The analysis over its floor, per process, so each ratio shares its process's machine and load.
    over_floor = median([run["analysis"] / run["bf16_floor"] for run in runs["screened"]])
    section.add(
        f"**The first analysis at 130k** ({n_test:,} test against {3 * n_classes:,} train, nothing stored), timed in "
        f"Python as `python -m bench --only ui` times it (`bench.ui.first_analysis_in_python`), each run in a fresh "
        f"process (so torch's import and the loading of the compiled steps are included), {rounds} runs each in "
        f'alternating order, medians; load average {load:.1f} when this started. "FAISS flat" turns the screen off '
        "(`core.search.screen.bf16_native` answering False). The arithmetic floor is the test search's product alone "
        f"(2 · {n_test:,} · {3 * n_classes:,} · 512 FLOP) at the rate torch multiplies at the screen's block shape, "
        "measured in each process after its analysis (`bench.timing.matmul_rates`, best of 5): "
        f"{floor['bf16_gflops']:,.0f} GFLOP/s in bf16, {floor['fp32_gflops']:,.0f} in fp32 (medians over the "
        f"processes). On the Intel Xeon with AMX (bf16 at {AMX_BF16_GFLOPS:,} GFLOP/s) the bf16 floor would be "
        f"{seconds(product_flop(n_test, 3 * n_classes, 512) / AMX_BF16_GFLOPS / 1e9)}.",
        table(
            ["step", "FAISS flat", "bf16 screen", "speed-up"],
            [
                [
                    words,
                    seconds(figures["flat"][step]),
                    seconds(figures["screened"][step]),
                    f"{figures['flat'][step] / figures['screened'][step]:.2f}×",
                ]
                for step, words in steps
            ]
            + [
                [
                    f"arithmetic floor of the test search in {precision}",
                    seconds(figures["flat"][f"{precision}_floor"]),
                    seconds(figures["screened"][f"{precision}_floor"]),
                    "",
                ]
                for precision in ("bf16", "fp32")
            ],
        ),
        f"The screened first analysis takes {over_floor:.2f}× its bf16 floor (median over processes of each "
        f"one's analysis over its own floor; target ≤ {FLOOR_TARGET:.0f}×).",
    )
    section.check(
        "first analysis at 130k (100k test × 30k train), screened vs FAISS flat",
        f"{seconds(figures['screened']['analysis'])} vs {seconds(figures['flat']['analysis'])}",
        None,
    )
    section.check(
        f"first analysis at 130k ≤ {FLOOR_TARGET:.0f}× the bf16 floor of its search, measured in the same process",
        f"{over_floor:.2f}× ({seconds(figures['screened']['analysis'])} against {seconds(floor['bf16_floor'])})",
        over_floor <= FLOOR_TARGET,
    )


def _first_analysis_case(search: str, path: str) -> dict[str, float]:
    """bench.ui's first-analysis timings in this process, with the screen off for "flat"."""
    from bench.ui import first_analysis_in_python
    from core.search import screen

    if search == "flat":
        screen.bf16_native = lambda: False
    return first_analysis_in_python(Path(path))


def _balance_case(
    labelling: str, n_train: int, n_queries: int, dim: int, class_size: int
) -> dict[str, float]:
    """Index build, label search and scores of one labelling, with the process's memory before and at its peak."""
    n_classes = n_train // class_size
    space = EmbeddingSpace(n_classes + n_classes // 3, dim=dim, seed=3)
    classes = np.repeat(np.arange(n_classes), class_size)
    train = space.sample(classes)
    in_class = int(n_queries * 0.7)
    queries = np.vstack(
        [
            space.sample(space.rng.integers(0, n_classes, in_class)),
            space.sample(space.rng.integers(n_classes, space.n_classes, n_queries - in_class)),
        ]
    )
    labels = np.array([f"class-{c}" for c in classes], dtype=object)
    if labelling == "uneven":
        # The first half of the clusters become one class: its queries find only it for 10k rows.
        labels[: n_train // 2] = "one big class"
    deeper = []  # the deeper searches' FAISS calls, as the watch hears them
    watch = Watch(report=lambda done, total, stage: deeper.append(stage == DEEPER_SEARCH_STAGE))
    config = PredictConfig(k=K)
    before = peak_rss_mb()
    started = time.perf_counter()
    search_and_rank(VectorIndex(train), labels, queries, config, watch)
    return {
        "SECONDS": time.perf_counter() - started,
        "BEFORE_MB": before,
        "PEAK_MB": peak_rss_mb(),
        "DEPTH": first_search_depth(
            n_train, search_width(config), K, int(np.unique(labels, return_counts=True)[1].max())
        ),
        "DEEPER_CALLS": sum(deeper),
    }


def _class_balance(section: Section, plan=BALANCE) -> None:
    sizes = [str(plan[key]) for key in ("train", "queries", "dim", "class_size")]
    found = {
        labelling: {
            key: float(value)
            for key, value in run_python(["-m", "bench.search", labelling, *sizes]).items()
        }
        for labelling in ("balanced", "uneven")
    }
    extra = {name: max(case["PEAK_MB"] - case["BEFORE_MB"], 1.0) for name, case in found.items()}
    time_ratio = found["uneven"]["SECONDS"] / found["balanced"]["SECONDS"]
    memory_ratio = extra["uneven"] / extra["balanced"]
    section.add(
        f"**Uneven classes**: {plan['train']:,} train × {plan['dim']}-d and {plan['queries']:,} queries, "
        f"`search_and_rank` (index build, the top-{K} distinct labels and the distractor scores), each labelling "
        f"in a fresh process. Balanced: classes of {plan['class_size']}. Uneven: the same vectors, but half "
        "of them one class. Searching k × the largest class deep took 56 s and 3.4 GB here (issue #12); the "
        "search now stops at a fixed depth and searches again, among the classes a query lacks, only for "
        "the queries still short of labels.",
        table(
            ["labelling", "time", "peak memory added"],
            [
                [name, seconds(case["SECONDS"]), f"{extra[name]:,.0f} MB"]
                for name, case in found.items()
            ],
        ),
    )
    depths = {name: int(case["DEPTH"]) for name, case in found.items()}
    deeper = {name: int(case["DEEPER_CALLS"]) for name, case in found.items()}
    section.add(
        f"The first search keeps each query's top {depths['balanced']} rows when balanced and "
        f"{depths['uneven']} when uneven (k × the largest class, at most "
        f"`core.prediction.predict.FIRST_SEARCH_DEPTH`); FAISS calls searching deeper: {deeper['balanced']} "
        f"balanced, {deeper['uneven']} uneven. "
        + (
            "With no deeper search, the uneven time above is that of the first search keeping more rows "
            "per query; the products are the same."
            if not any(deeper.values())
            else "The deeper searches scan only the classes a query lacks, a row at a time (FAISS with "
            "a selector)."
        )
    )
    section.check(
        f"uneven classes within {BALANCE_TARGET:.0f}× of balanced (time, memory)",
        f"{time_ratio:.1f}×, {memory_ratio:.1f}×",
        time_ratio <= BALANCE_TARGET and memory_ratio <= BALANCE_TARGET,
    )


def _vectors(n_train: int, n_queries: int, seed: int = 1):
    """Train vectors and queries, 70% of them from train's classes and 30% from classes it lacks."""
    known = max(n_train // 50, 100)
    space = EmbeddingSpace(known + known // 3, seed=seed)
    train = space.sample(space.rng.integers(0, known, n_train))
    in_class = int(n_queries * 0.7)
    queries = np.vstack(
        [
            space.sample(space.rng.integers(0, known, in_class)),
            space.sample(space.rng.integers(known, space.n_classes, n_queries - in_class)),
        ]
    )
    return train, queries, in_class


def _build(vectors: np.ndarray, kind: str) -> tuple[VectorIndex, float]:
    started = time.perf_counter()
    index = VectorIndex(vectors, kind)
    return index, time.perf_counter() - started


def _large(section: Section, plan) -> None:
    n = plan["large"]
    train, queries, in_class = _vectors(n, plan["queries"])
    exact, exact_build = _build(train, "exact")
    auto, auto_build = _build(train, "auto")
    found = {}

    def search(name, index):
        def run():
            found[name] = index.search(queries, K)

        return run

    timings = interleaved(
        {"exact": search("exact", exact), "auto": search("auto", auto)}, plan["rounds"]
    )
    singles = queries[: plan["singles"]]
    single_timings = interleaved(
        {
            "exact": lambda: [exact.search(row[None], K) for row in singles],
            "auto": lambda: [auto.search(row[None], K) for row in singles],
        },
        plan["rounds"],
    )
    recall = _recall(found["exact"].indices, found["auto"].indices)
    score_gap = found["exact"].similarities[:, 0] - found["auto"].similarities[:, 0]
    speedup = median_ratio(timings["exact"], timings["auto"])
    single_speedup = median_ratio(single_timings["exact"], single_timings["auto"])
    per_query = {name: median(times) / len(queries) for name, times in timings.items()}
    section.add(
        f"**{n:,} train vectors**, {len(queries):,} queries ({in_class} from train's classes, "
        f'{len(queries) - in_class} distractors from classes train lacks). kind="auto" chose '
        f"**{auto.kind}** at this size: {auto.settings}.",
        table(
            [
                "index",
                "build",
                "per query (batch)",
                "per query (one at a time)",
                "recall@5 vs exact",
            ],
            [
                [
                    "exact (IndexFlatIP)",
                    seconds(exact_build),
                    seconds(per_query["exact"]),
                    seconds(median(single_timings["exact"]) / len(singles)),
                    "1",
                ],
                [
                    f"auto → {auto.kind}",
                    seconds(auto_build),
                    seconds(per_query["auto"]),
                    seconds(median(single_timings["auto"]) / len(singles)),
                    f"{recall.mean():.3f} (train classes {recall[:in_class].mean():.3f}, distractors {recall[in_class:].mean():.3f})",
                ],
            ],
        ),
        f"Speed-up per query: {speedup:.1f}× in a batch, {single_speedup:.1f}× one query at a time. The "
        f"distractor score (best similarity) differs from exact by a median of {np.median(score_gap):.4f} "
        f"and at most {score_gap.max():.4f}; the approximate index can only under-estimate it. Building "
        f"pays for itself after about {auto_build / max(per_query['exact'] - per_query['auto'], 1e-9):,.0f} "
        f"queries. Memory: the exact index holds {train.nbytes / 2**30:.1f} GB of vectors; the IVF index "
        f"holds the same vectors for re-ranking plus a quarter of that in codes.",
    )
    at_target_size = n >= 1_000_000
    label = f"{n:,} train vectors" + (
        "" if at_target_size else " (quick mode; the target is at 1M)"
    )
    section.check(
        f"approximate index at {label}: recall@5 ≥ {RECALL_TARGET}",
        f"{recall.mean():.3f}",
        bool(recall.mean() >= RECALL_TARGET) if at_target_size else None,
    )
    section.check(
        f"… and ≥ {SPEEDUP_TARGET:.0f}× faster per query than exact",
        f"{speedup:.1f}×",
        speedup >= SPEEDUP_TARGET if at_target_size else None,
    )


def _kinds(section: Section, plan) -> None:
    n = plan["kinds_at"]
    train, queries, in_class = _vectors(n, plan["queries"], seed=2)
    indexes, builds = {}, {}
    for kind in ("exact", "ivf", "hnsw"):
        indexes[kind], builds[kind] = _build(train, kind)
    found = {}

    def search(kind):
        def run():
            found[kind] = indexes[kind].search(queries, K)

        return run

    timings = interleaved({kind: search(kind) for kind in indexes}, plan["rounds"])
    rows = []
    for kind in indexes:
        recall = _recall(found["exact"].indices, found[kind].indices)
        rows.append(
            [
                kind,
                seconds(builds[kind]),
                seconds(median(timings[kind]) / len(queries)),
                f"{median_ratio(timings['exact'], timings[kind]):.1f}×",
                f"{recall.mean():.3f} ({recall[:in_class].mean():.3f} / {recall[in_class:].mean():.3f})",
            ]
        )
    section.add(
        f'**Every kind at {n:,} vectors** (the auto threshold), to show why "auto" picks IVF above it: '
        f"HNSW searches fast but takes far longer to build on two cores.",
        table(
            [
                "kind",
                "build",
                "per query (batch)",
                "speed-up",
                "recall@5 (train classes / distractors)",
            ],
            rows,
        ),
    )


if __name__ == "__main__":
    # python -m bench.search <balanced|uneven> <train> <queries> <dim> <class size>: one case of _class_balance;
    # python -m bench.search first-analysis <flat|screened> <parquet>: one run of _first_analysis.
    case, *arguments = sys.argv[1:]
    found = (
        _first_analysis_case(*arguments)
        if case == "first-analysis"
        else _balance_case(case, *map(int, arguments))
    )
    for key, value in found.items():
        print(f"{key}={value}")
