"""The live threshold slider: a Streamlit component that answers each key press in the browser from figures sent once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import streamlit as st

from core.analysis.threshold_steps import ThresholdSteps

_HERE = Path(__file__).parent
_component = st.components.v2.component(
    "retrieval_lab.live_threshold",
    css=(_HERE / "live_threshold.css").read_text(encoding="utf-8"),
    js=(_HERE / "live_threshold.js").read_text(encoding="utf-8"),
)
STATE = "threshold"  # the component's state: the threshold the slider last rested on


@dataclass(frozen=True)
class LiveMetric:
    """One figure under the slider, given for every slider position."""

    label: str
    shown: list[str]  # the text shown at each position
    # when given, the change since the slider last rested is shown under the value
    counts: list[int] | None = None
    help: str | None = None  # the tooltip


@dataclass(frozen=True)
class RankTable:
    """A small two-column table given for every slider position."""

    label: str  # the first column's heading
    counted: str  # the second column's heading
    names: list[str]  # the first column
    counts: list[list[int]]  # per position, the second column


@dataclass(frozen=True)
class Binned:
    """A histogram: bin edges and a height per bin."""

    edges: list[float]
    heights: list[float]
    name: str  # the legend's words


@dataclass(frozen=True)
class LiveChart:
    """A chart over thresholds whose marker follows the slider: histogram bars and steps and/or a curve."""

    title: str
    x_title: str
    y_title: str
    y_format: str  # the y ticks: "percent" or "fixed" (two decimals)
    marker_labels: list[str]  # the marker's words at each slider position
    bars: Binned | None = None  # filled bars
    steps: Binned | None = None  # an outline drawn over the bars
    # a value at each slider position, drawn as a curve the marker's dot follows
    line: list[float] | None = None
    best: dict | None = None  # a point marked on the curve: {"x", "y", "label"}
    # A shaded interval around the curve at each slider position: {"low", "high", "name"}.
    band: dict | None = None
    y_max: float | None = None  # the top of the y axis; None: a little above the highest value


def live_threshold(
    label: str,
    steps: ThresholdSteps,
    decimals: int,
    rows: list[list[LiveMetric]],
    ranks: RankTable,
    charts: list[LiveChart],
    value: float,
    origin: int,
    key: str,
    on_rest: Callable[[], None],
) -> None:
    """The slider (an input[type=range] labelled `label`) with `rows` of metrics, `ranks` and `charts` following it in the browser.

    The slider shows `value` whenever `origin` differs from the last one it was given (a threshold
    set on the server); otherwise it stays where the user left it. Once it rests, `on_rest` runs
    with the chosen threshold in rested_threshold(key)."""
    figures = {
        "label": label,
        "decimals": decimals,
        "low": steps.low,
        "high": steps.high,
        "thresholds": [f"{threshold:.{decimals}f}" for threshold in steps.thresholds],
        "rows": [[asdict(metric) for metric in row] for row in rows],
        "ranks": asdict(ranks),
        "charts": [asdict(chart) for chart in charts],
    }
    # Identifies the figures, so the browser rebuilds the panel only when they change.
    key_of_figures = hashlib.blake2b(
        json.dumps(figures, sort_keys=True).encode(), digest_size=12
    ).hexdigest()
    _component(
        key=key,
        data={**figures, "key": key_of_figures, "value": value, "origin": origin},
        **{f"on_{STATE}_change": on_rest},
    )


def rested_threshold(key: str) -> float:
    """The threshold the slider of component `key` last rested on."""
    return float(st.session_state[key][STATE])
