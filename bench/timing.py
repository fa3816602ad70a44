"""Timing on a shared, noisy machine: contenders run side by side in rotating order, medians of repeats."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.embedding.clip import usable_cores

# bf16 matrix-multiply rate measured on the Intel Xeon with AMX where BENCHMARKS.md was first made.
AMX_BF16_GFLOPS = 1985


def interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per run of each contender, `repeats` rounds; each round runs all, starting at a different one.

    Load from other users drifts over seconds: rotating the order spreads it over every contender
    alike, so ratios of the medians are fair even when absolute times are not.
    """
    names = list(contenders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median(values) -> float:
    return float(statistics.median(values))


def machine_line() -> str:
    """CPU, cores, memory, load and library versions: what every absolute number here depends on."""
    import faiss
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory_gb = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        if hasattr(os, "sysconf")
        else float("nan")
    )
    load = (
        ", ".join(f"{value:.1f}" for value in os.getloadavg())
        if hasattr(os, "getloadavg")
        else "n/a"
    )
    return (
        f"{cpu}, {usable_cores()} cores usable, {memory_gb:.0f} GB RAM, load average {load} at start; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}, numpy {numpy.__version__}, {platform.system()} {platform.release()}"
    )


def run_python(arguments: list[str], env: dict | None = None) -> dict[str, str]:
    """Run `python <arguments>` in a fresh interpreter; its `KEY=value` output lines, as a dict."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"python {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in completed.stdout.splitlines() if "=" in line)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux keeps ru_maxrss across exec, so a child started from a big parent reports the parent's
    peak; VmHWM belongs to the process's own memory map. ru_maxrss (KB on Linux) is the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of numerator / denominator, each pair measured in the same round."""
    return median([top / bottom for top, bottom in zip(numerators, denominators)])


def matmul_rates(rows: int, dims: int = 512, tries: int = 5) -> dict[str, float]:
    """GFLOP/s of torch's bf16 and fp32 products at the exact screen's block shape against `rows` rows.

    The best of `tries` after a warm-up, the two precisions taking turns: the rate this machine can
    reach for the product an exact search cannot avoid, the denominator of its arithmetic floor.
    """
    import torch

    from core.search.screen import queries_per_block

    block = queries_per_block(rows)
    generator = torch.Generator().manual_seed(0)
    left = torch.rand(block, dims, generator=generator) - 0.5
    right = (torch.rand(rows, dims, generator=generator) - 0.5).T.contiguous()
    pairs = {"bf16": (left.bfloat16(), right.bfloat16()), "fp32": (left, right)}
    outputs = {name: torch.empty(block, rows, dtype=pair[0].dtype) for name, pair in pairs.items()}
    best = dict.fromkeys(pairs, float("inf"))
    for attempt in range(tries + 1):
        for name, (a, b) in pairs.items():
            started = time.perf_counter()
            torch.matmul(a, b, out=outputs[name])
            if attempt:  # the first of each is a warm-up: kernels are made on first use
                best[name] = min(best[name], time.perf_counter() - started)
    return {name: 2 * block * rows * dims / fastest / 1e9 for name, fastest in best.items()}


def product_flop(n_queries: int, n_rows: int, dims: int) -> float:
    """Floating-point operations of the product of every query with every row: 2·queries·rows·dims."""
    return 2.0 * n_queries * n_rows * dims
