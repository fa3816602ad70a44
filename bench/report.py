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


def write_report(
    path: Path, sections: list[Section], preamble: list[str], keep_other_sections: bool = False
) -> None:
    """Write the report; with `keep_other_sections`, sections this run did not produce stay as the file had them."""
    rows = [
        [section.label, check.target, check.measured, verdict(check.met)]
        for section in sections
        for check in section.checks
    ]
    bodies = {section.title: [f"## {section.title}", *section.body] for section in sections}
    if keep_other_sections and Path(path).exists():
        old_rows, old_bodies = _read_report(Path(path).read_text(encoding="utf-8"))
        labels = {section.label for section in sections}
        rows += [row for row in old_rows if row[0] not in labels]
        bodies = {
            **{title: body for title, body in old_bodies.items() if title not in bodies},
            **bodies,
        }
    rows.sort(key=lambda row: _leading_number(row[0]))
    blocks = [*preamble, "## Summary", table(["Benchmark", "Target", "Measured", "Verdict"], rows)]
    for title in sorted(bodies, key=_leading_number):
        blocks += bodies[title]
    Path(path).write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def _leading_number(text: str) -> int:
    """Sections and summary rows are numbered ("3. Search"); the number orders them."""
    number = text.split(".", 1)[0]
    return int(number) if number.isdigit() else 0


def _read_report(text: str) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The summary rows and the section blocks (by title) of a report this module wrote."""
    parts = text.split("\n\n## ")[1:]
    summary, sections = parts[0], parts[1:]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in summary.splitlines()[4:]
        if line.startswith("| ")
    ]
    bodies = {}
    for section in sections:
        title, _, body = section.partition("\n\n")
        bodies[title] = [f"## {title}", body.rstrip("\n")]
    return rows, bodies


def seconds(value: float) -> str:
    """A duration with sensible units and about three significant figures."""
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"
