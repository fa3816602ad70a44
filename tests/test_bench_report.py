"""Tests for bench.report and bench.served's process figures: a partial bench run replaces its own sections and keeps
the others; CPU time counts a process's children, running or ended."""

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Section, write_report
from bench.served import cpu_seconds, with_descendants


def section(number: int, name: str, measured: str) -> Section:
    made = Section(f"{number}. {name} in full", f"{number}. {name}")
    made.add(f"Body of {name}, measured {measured}.", "| a | b |\n| --- | --- |\n| 1 | 2 |")
    made.check(f"{name} target", measured, True)
    return made


def test_a_partial_run_replaces_only_its_sections_and_keeps_the_order(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    write_report(
        report,
        [section(1, "Embedding", "old 1"), section(3, "Search", "old 3")],
        ["# Benchmarks", "full run"],
    )
    write_report(
        report,
        [section(2, "Slider", "new 2"), section(3, "Search", "new 3")],
        ["# Benchmarks", "partial run"],
        keep_other_sections=True,
    )
    text = report.read_text()
    assert "partial run" in text and "full run" not in text
    assert "old 1" in text and "old 3" not in text and "new 3" in text
    assert (
        text.index("## 1. Embedding in full")
        < text.index("## 2. Slider in full")
        < text.index("## 3. Search in full")
    )
    summary = text.split("## Summary")[1].split("## 1.")[0]
    assert [line.split(" | ")[0] for line in summary.strip().splitlines()[2:]] == [
        "| 1. Embedding",
        "| 2. Slider",
        "| 3. Search",
    ]
    assert text.count("| a | b |") == 3


def test_a_full_run_writes_only_what_it_measured(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    write_report(report, [section(1, "Embedding", "old 1")], ["# Benchmarks"])
    write_report(report, [section(2, "Slider", "new 2")], ["# Benchmarks"])
    assert "Embedding" not in report.read_text()


def test_cpu_time_counts_a_busy_child_while_it_runs_and_once_it_has_ended():
    me = Path(f"/proc/{os.getpid()}")
    busy = "import time\nstarted = time.process_time()\nwhile time.process_time() - started < 0.6: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    running = Path(f"/proc/{child.pid}")
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds([running]) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running in with_descendants(me)
        spent, alone = cpu_seconds([running]), cpu_seconds([me])
        assert spent >= 0.5
    finally:
        child.kill()
        child.wait()
    # ended and waited for, the child's time moves into its parent's own figure
    assert cpu_seconds([me]) - alone >= spent - 0.05
