"""Top-5 search: FAISS exact vs numpy at the product's size, cost on uneven classes, and the approximate index at 1M."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from bench.fixtures import EmbeddingSpace, retrieval_embeddings
from bench.report import Section, seconds, table
from bench.timing import interleaved, median, median_ratio, peak_rss_mb, run_python
from core.records import TEST, TRAIN
from core.retrieval.index import EXACT_UP_TO, VectorIndex
from core.retrieval.pipeline import PredictConfig, search_and_rank

FULL = {"rounds": 5, "large": 1_000_000, "queries": 1000, "singles": 20, "kinds_at": 100_000}
QUICK = {"rounds": 3, "large": 200_000, "queries": 500, "singles": 10, "kinds_at": None}
# Issue #12's uneven case: 20k train of 64 dims, half of it one class, 5k queries; the balanced
# twin has the same vectors in classes of 20. Each runs in a fresh process for its own peak memory.
BALANCE = {"train": 20_000, "queries": 5_000, "dim": 64, "class_size": 20}
K = 5
RECALL_TARGET, SPEEDUP_TARGET = 0.95, 10.0
BALANCE_TARGET = 2.0  # the uneven case may take at most this many times the balanced one's time and memory


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
    section = Section("3. Search: exact top-5, and an approximate index past a million vectors", "3. Search")
    _product_size(section, plan)
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
        f"vectors; `VectorIndex` with kind \"auto\", which is exact below {EXACT_UP_TO:,} vectors; "
        f"index build included):",
        table(
            ["method", "median time", "speed-up"],
            [
                ["numpy brute force (matmul, argpartition, sort)", seconds(median(timings["numpy"])), "1.0×"],
                ["FAISS IndexFlatIP (`core.retrieval.index.VectorIndex`)", seconds(median(timings["faiss"])), f"{median_ratio(timings['numpy'], timings['faiss']):.1f}×"],
            ],
        ),
        f"Both return the same top-{K} similarities: {same}.",
    )
    section.check(
        "FAISS exact top-5, 13k × 3k, vs numpy",
        f"{seconds(median(timings['faiss']))} vs {seconds(median(timings['numpy']))}",
        None,
    )


def _balance_case(labelling: str, n_train: int, n_queries: int, dim: int, class_size: int) -> dict[str, float]:
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
    before = peak_rss_mb()
    started = time.perf_counter()
    search_and_rank(VectorIndex(train), labels, queries, PredictConfig(k=K))
    return {"SECONDS": time.perf_counter() - started, "BEFORE_MB": before, "PEAK_MB": peak_rss_mb()}


def _class_balance(section: Section, plan=BALANCE) -> None:
    sizes = [str(plan[key]) for key in ("train", "queries", "dim", "class_size")]
    found = {
        labelling: {key: float(value) for key, value in run_python(["-m", "bench.search", labelling, *sizes]).items()}
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
            [[name, seconds(case["SECONDS"]), f"{extra[name]:,.0f} MB"] for name, case in found.items()],
        ),
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

    timings = interleaved({"exact": search("exact", exact), "auto": search("auto", auto)}, plan["rounds"])
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
        f"{len(queries) - in_class} distractors from classes train lacks). kind=\"auto\" chose "
        f"**{auto.kind}** at this size: {auto.settings}.",
        table(
            ["index", "build", "per query (batch)", "per query (one at a time)", "recall@5 vs exact"],
            [
                ["exact (IndexFlatIP)", seconds(exact_build), seconds(per_query["exact"]), seconds(median(single_timings["exact"]) / len(singles)), "1"],
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
    label = f"{n:,} train vectors" + ("" if at_target_size else " (quick mode; the target is at 1M)")
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
    for kind, index in indexes.items():
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
        f"**Every kind at {n:,} vectors** (the auto threshold), to show why \"auto\" picks IVF above it: "
        f"HNSW searches fast but takes far longer to build on two cores.",
        table(["kind", "build", "per query (batch)", "speed-up", "recall@5 (train classes / distractors)"], rows),
    )


if __name__ == "__main__":
    # python -m bench.search <balanced|uneven> <train> <queries> <dim> <class size>: one case of _class_balance.
    labelling, *numbers = sys.argv[1:]
    for key, value in _balance_case(labelling, *map(int, numbers)).items():
        print(f"{key}={value}")
