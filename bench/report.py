"""BENCHMARKS.md: a machine line, a summary of targets, and one section of tables per benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Check:
    """One target from the issue and what this run measured for it."""

    target: str  # the goal, in words
    measured: str  # the figure this run produced, with its baseline where it has one
    met: bool | None  # None: reported without a pass/fail target


@dataclass
class Section:
    """One benchmark's findings."""

    title: str
    label: str  # a few words naming the section in the summary table
    body: list[str] = field(default_factory=list)  # markdown blocks: paragraphs and tables
    checks: list[Check] = field(default_factory=list)

    def add(self, *blocks: str) -> None:
        self.body.extend(blocks)

    def check(self, target: str, measured: str, met: bool | None) -> None:
        self.checks.append(Check(target, measured, met))


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "reported"}[met]


def write_report(path: Path, sections: list[Section], preamble: list[str]) -> None:
    summary = table(
        ["Benchmark", "Target", "Measured", "Verdict"],
        [[section.label, check.target, check.measured, verdict(check.met)] for section in sections for check in section.checks],
    )
    blocks = [*preamble, "## Summary", summary]
    for section in sections:
        blocks += [f"## {section.title}", *section.body]
    Path(path).write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def seconds(value: float) -> str:
    """A duration with sensible units and about three significant figures."""
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"
