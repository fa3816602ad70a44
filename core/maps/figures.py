"""Plotly figure builders: arrays in, go.Figure out, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from core.display import count_text, inert_plotly
from core.maps.projection import Projection
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

if TYPE_CHECKING:
    from core.analysis.pipeline import Analysis

TRAIN_COLOUR = "#1f77b4"
TEST_COLOUR = "#ff7f0e"
DISTRACTOR_COLOUR = "#d62728"
UNKNOWN_COLOUR = "#9e9e9e"  # no label or no score
GUIDE_COLOUR = "#444444"  # thresholds and reference lines
MARKED_POINT = {
    "color": GUIDE_COLOUR,
    "size": 12,
    "symbol": "circle",
}  # a curve's current or best point
SCORE_SCALE = "Viridis"
THRESHOLD_AXIS = "threshold (max cosine similarity to train)"
# Red is reserved for distractors, so class colours leave it out.
LABEL_PALETTE = [colour for colour in qualitative.Dark24 if colour != "#FB0D0D"]
SPLIT_COLOURS = {TRAIN: TRAIN_COLOUR, TEST: TEST_COLOUR}
SPLIT_SYMBOLS = {TRAIN: "circle", TEST: "diamond"}
# Map traces are drawn bottom-up: test, where the distractors are, stays on top of the train references.
DRAW_ORDER = (TRAIN, TEST)
# Markers shrink and fade as a map grows, so that at 100k points overlaps add up to density rather
# than one solid disc: each from its largest value at 1,000 points down to its smallest at 100,000.
MARKER_SIZES = (7.0, 3.0)
MARKER_OPACITIES = (0.8, 0.3)
# Flagged test points shrink and fade less: at 100k a lone red point at opacity 0.3 over the dense
# orange of kept test composites to #f36516 on #ff7f0e, lost; at 0.7 it is #e24120, still red.
FLAGGED_MARKER_SIZES = (8.0, 5.0)
FLAGGED_MARKER_OPACITIES = (0.9, 0.7)
# The score histogram carries the share in each bin, never the raw scores, so its figure stays a few
# KB at 100k items (the raw scores were 209 KB at 13k, sent again on every slider move).
SCORE_BINS = 50

COLOUR_MODES = ("split", "label", "flag", "score")
# Columns scatter_map always needs, and the extra one each colour mode reads.
MAP_COLUMNS = ("x", "y", "split", "id", "row")
MODE_COLUMNS = {"split": None, "label": "label", "flag": "flag", "score": "score"}
# One trace of the map: legend name, which rows, and the marker properties it sets.
MapGroup = tuple[str, pd.Series, dict]


def map_points(
    embeddings: Embeddings,
    projection: Projection,
    *,
    labels: Sequence | None = None,
    flags: Sequence[bool] | None = None,
    scores: Sequence[float] | None = None,
) -> pd.DataFrame:
    """The table scatter_map draws: one row per embedding, in the embeddings' order.

    ``projection`` must come from ``embeddings.subset(TRAIN)`` and ``.subset(TEST)`` vectors.
    ``labels`` replaces the stored labels (e.g. predicted top-1 for test); ``flags`` (True =
    flagged distractor) and ``scores`` are aligned with the embeddings' rows and add the columns
    "flag" and "score". Column "row" is the position in ``embeddings``, for mapping selections back.
    """
    train_mask, test_mask = embeddings.mask(TRAIN), embeddings.mask(TEST)
    if (train_mask.sum(), test_mask.sum()) != (len(projection.train_xy), len(projection.test_xy)):
        raise ValueError(
            f"projection has {len(projection.train_xy)} train and {len(projection.test_xy)} test "
            f"points but the embeddings have {train_mask.sum()} and {test_mask.sum()}"
        )
    xy = np.zeros((len(embeddings.ids), 2), dtype=np.float32)
    xy[train_mask] = projection.train_xy
    xy[test_mask] = projection.test_xy
    columns = {
        "x": xy[:, 0],
        "y": xy[:, 1],
        "split": embeddings.splits,
        "id": embeddings.ids,
        "label": embeddings.labels if labels is None else labels,
        "row": np.arange(len(embeddings.ids)),
    }
    for name, values in (("flag", flags), ("score", scores)):
        if values is not None:
            columns[name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have one value per embedding; lengths are {lengths}")
    return pd.DataFrame(columns)


def analysis_map_points(
    embeddings: Embeddings,
    analysis: Analysis,
    projection: Projection,
    threshold: float,
    *,
    predicted_test_labels: bool = False,
) -> pd.DataFrame:
    """map_points for an analysis of ``embeddings``: flags at ``threshold`` and distractor scores.

    Test rows carry their score and flag; train rows their leave-one-out score (what a kept test
    item tends to score) and no flag. With ``predicted_test_labels`` test rows show their predicted
    top-1 label ("-1" when flagged) instead of their true one.
    """
    train_rows, test_rows = embeddings.mask(TRAIN), embeddings.mask(TEST)
    flags = np.zeros(len(embeddings.ids), dtype=bool)
    flags[test_rows] = analysis.flags(threshold)
    scores = np.full(len(embeddings.ids), np.nan)
    scores[train_rows] = analysis.train_loo_scores
    scores[test_rows] = analysis.scores
    labels = embeddings.labels.copy()
    if predicted_test_labels:
        labels[test_rows] = [row[0] if row else None for row in analysis.predictions(threshold)]
    return map_points(embeddings, projection, labels=labels, flags=flags, scores=scores)


def scatter_map(
    points: pd.DataFrame,
    colour_by: str = "split",
    *,
    method: str = "UMAP",
    title: str | None = None,
) -> go.Figure:
    """WebGL scatter of projected train and test points, ready for box/lasso selection.

    ``points`` has columns x, y, split ("train"/"test"), id and row (any int carried into each
    point's ``customdata``, so a selection maps back to items), plus the column ``colour_by`` reads:
      "split" — train vs test;
      "label" — column "label", one colour per class ("-1" red, missing grey; colours repeat
                when classes outnumber LABEL_PALETTE, hover shows the name);
      "flag"  — column "flag", True = test point flagged as distractor (red);
      "score" — column "score", a shared colour scale; rows without a score are grey.
    Train points are circles and test points diamonds in every mode, test drawn over train and
    flagged test over kept test. Every trace is WebGL (Scattergl): SVG slows to a crawl well before
    100k points. Markers get smaller and fainter as points grow in number, flagged test ones less so.
    ``method`` names the axes ("UMAP 1", "UMAP 2").
    """
    if colour_by not in COLOUR_MODES:
        raise ValueError(f"colour_by {colour_by!r} is not known; use one of {COLOUR_MODES}")
    needed = [*MAP_COLUMNS, *([MODE_COLUMNS[colour_by]] if MODE_COLUMNS[colour_by] else [])]
    missing = [column for column in needed if column not in points.columns]
    if missing:
        raise ValueError(
            f"colour_by={colour_by!r} needs columns {missing}; the points have {list(points.columns)}"
        )
    scale = _marker_scale(len(points), MARKER_SIZES, MARKER_OPACITIES)
    groups = _MAP_GROUPS[colour_by](points)
    figure = go.Figure(
        [
            _map_trace(points[mask], name, {**scale, **marker})
            for name, mask, marker in groups
            if mask.any()
        ]
    )
    title = title or f"{method} map of train and test embeddings"
    if colour_by == "score":
        figure.update_layout(coloraxis={"colorscale": SCORE_SCALE, "colorbar": {"title": "score"}})
    if colour_by == "label":
        # A legend swatch would show one arbitrary class colour per split: say it in words instead.
        figure.update_layout(showlegend=False)
        title += (
            "<br><sup>colour = class, red = distractor (-1), grey = unknown · ● train ◆ test</sup>"
        )
    figure.update_layout(
        dragmode="lasso",
        uirevision="map",  # keep zoom and selection when only the colouring changes
        legend={
            "orientation": "h",
            "y": 1.02,
            "yanchor": "bottom",
            "x": 0,
            "traceorder": "reversed",
        },
    )
    # A projection's units mean nothing, but distances do: keep one unit the same on both axes. To
    # keep it, the plot area shrinks on one side ("domain"), rather than one axis's range growing
    # past the points (-2…14 for points in 4…8 in a wide plot).
    figure.update_xaxes(constrain="domain")
    figure.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    return _styled(figure, title, f"{method} 1", f"{method} 2")


def _marker_scale(
    n_points: int, sizes: tuple[float, float], opacities: tuple[float, float]
) -> dict:
    """Marker size and opacity for a map of ``n_points``, each pair given as (at 1k points, at 100k)."""
    return {
        "size": _by_point_count(n_points, *sizes),
        "opacity": _by_point_count(n_points, *opacities),
    }


def _by_point_count(n_points: int, at_1k: float, at_100k: float) -> float:
    """A marker property moving from ``at_1k`` to ``at_100k`` along log10 of the point count, held beyond."""
    share = np.clip((np.log10(max(n_points, 1)) - 3) / 2, 0, 1)
    return float(at_1k + share * (at_100k - at_1k))


def _map_trace(rows: pd.DataFrame, name: str, marker: dict) -> go.Scattergl:
    symbols = rows["split"].map(SPLIT_SYMBOLS).fillna("circle")
    # One symbol for a one-split trace (all but "no score") keeps 100k-point figures smaller.
    symbol = symbols.iloc[0] if symbols.nunique() == 1 else symbols.to_numpy()
    return go.Scattergl(
        x=rows["x"],
        y=rows["y"],
        mode="markers",
        name=f"{name} ({count_text(len(rows))})",
        customdata=rows["row"].to_numpy(),
        hovertext=_hover_texts(rows),
        hoverinfo="text",
        marker={"symbol": symbol, **marker},
    )


def _hover_texts(rows: pd.DataFrame) -> np.ndarray:
    lines = rows["id"].map(inert_plotly) + "<br>" + rows["split"].astype(str)
    if "label" in rows:
        lines += " · label " + rows["label"].map(
            lambda label: "?" if pd.isna(label) else inert_plotly(label)
        )
    if "score" in rows:
        lines += "<br>score " + rows["score"].map(
            lambda score: "–" if pd.isna(score) else f"{score:.3f}"
        )
    if "flag" in rows:
        lines += _flagged(rows).map({True: "<br>flagged distractor", False: ""})
    # An array, not a list: plotly checks a list item by item, seconds at 100k points.
    return lines.to_numpy(dtype=object)


def _flagged(rows: pd.DataFrame) -> pd.Series:
    # eq(True) reads missing flags as "not flagged" whatever the column's dtype.
    return rows["flag"].eq(True)


def _split_groups(points: pd.DataFrame) -> list[MapGroup]:
    return [
        (split, points["split"] == split, {"color": SPLIT_COLOURS[split]}) for split in DRAW_ORDER
    ]


def _flag_groups(points: pd.DataFrame) -> list[MapGroup]:
    test = points["split"] == TEST
    flagged = _flagged(points)
    return [
        (TRAIN, points["split"] == TRAIN, {"color": TRAIN_COLOUR}),
        ("test kept", test & ~flagged, {"color": TEST_COLOUR}),
        (
            "test flagged distractor",
            test & flagged,
            {
                "color": DISTRACTOR_COLOUR,
                **_marker_scale(len(points), FLAGGED_MARKER_SIZES, FLAGGED_MARKER_OPACITIES),
            },
        ),
    ]


def _label_groups(points: pd.DataFrame) -> list[MapGroup]:
    known = sorted({str(label) for label in points["label"].dropna()} - {DISTRACTOR})
    colour_of = {label: LABEL_PALETTE[i % len(LABEL_PALETTE)] for i, label in enumerate(known)}
    colour_of[DISTRACTOR] = DISTRACTOR_COLOUR
    colours = points["label"].map(
        lambda label: UNKNOWN_COLOUR if pd.isna(label) else colour_of[str(label)]
    )
    return _per_split(points, lambda rows: {"color": colours[rows].to_numpy(dtype=object)})


def _score_groups(points: pd.DataFrame) -> list[MapGroup]:
    scored = points["score"].notna()

    def on_shared_scale(rows: pd.Series) -> dict:
        return {"color": points["score"][rows].to_numpy(), "coloraxis": "coloraxis"}

    unscored = ("no score", ~scored, {"color": UNKNOWN_COLOUR})
    return [unscored, *_per_split(points, on_shared_scale, among=scored)]


def _per_split(points: pd.DataFrame, marker_of, among: pd.Series | bool = True) -> list[MapGroup]:
    """A train and a test group of the rows in ``among``, each with a marker made for its rows."""
    groups = []
    for split in DRAW_ORDER:
        rows = (points["split"] == split) & among
        groups.append((split, rows, marker_of(rows)))
    return groups


_MAP_GROUPS = {
    "split": _split_groups,
    "label": _label_groups,
    "flag": _flag_groups,
    "score": _score_groups,
}


def score_histogram(
    test_scores: Sequence[float],
    train_loo_scores: Sequence[float] | None,
    threshold: float,
    *,
    bins: int = SCORE_BINS,
) -> go.Figure:
    """Distributions of the distractor score on shared bins, with the threshold as a vertical line.

    Test scores are max cosine similarity to train; train leave-one-out scores (similarity to
    the rest of train, or None) show what in-distribution items look like. Each set is binned once
    here and drawn as the share of the set in each bin, so sets of different sizes compare and the
    figure's size depends on ``bins``, not on the number of scores.
    """
    test, train = _floats(test_scores), _floats(train_loo_scores)
    traces = []
    if (binned := score_shares(test, train, bins)) is not None:
        edges, test_shares, train_shares = binned
        # Test is what the threshold cuts, so it gets the filled bars; the train reference is an outline
        # drawn over them, so where the two overlap at the threshold neither hides the other.
        if len(test):
            traces.append(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=test_shares,
                    width=np.diff(edges),
                    name=f"test ({len(test)})",
                    marker={"color": TEST_COLOUR, "line": {"width": 0}},
                    opacity=0.6,
                    hovertemplate="%{x:.3f}: %{y:.1%} of test<extra></extra>",
                )
            )
        if len(train):
            # Each bin's top from its left edge to the next one ("hv"), closed down to zero at both ends.
            traces.append(
                go.Scatter(
                    x=np.concatenate((edges[:1], edges)),
                    y=np.concatenate(([0.0], train_shares, [0.0])),
                    mode="lines",
                    line={"shape": "hv", "color": TRAIN_COLOUR, "width": 2},
                    name=f"train leave-one-out ({len(train)})",
                    hovertemplate="from %{x:.3f}: %{y:.1%} of train<extra></extra>",
                )
            )
    figure = go.Figure(traces)
    figure.update_layout(bargap=0)
    figure.update_yaxes(tickformat=".0%")
    _threshold_line(figure, threshold, "below = distractor · threshold")
    title = "Distractor scores: test vs train leave-one-out"
    return _styled(figure, title, "max cosine similarity to train", "share of the set")


def score_shares(
    test_scores: Sequence[float], train_loo_scores: Sequence[float] | None, bins: int = SCORE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Bin edges shared by both sets, and the share of each set in each bin (None when there is no score).

    Shares, not counts, so sets of different sizes compare; a set without scores has no shares (empty)."""
    if bins < 1:
        raise ValueError(f"bins={bins!r}: use an integer >= 1")
    test, train = _floats(test_scores), _floats(train_loo_scores)
    present = np.concatenate((test, train))
    if not len(present):
        return None
    edges = np.histogram_bin_edges(present, bins=bins)
    return edges, *(
        np.histogram(values, bins=edges)[0] / len(values) if len(values) else np.empty(0)
        for values in (test, train)
    )


def contamination_curve(
    thresholds: Sequence[float],
    contamination_rates: Sequence[float],
    current_threshold: float,
    current_rate: float,
) -> go.Figure:
    """Share of test flagged as distractor at each threshold, with the current choice marked."""
    thresholds, rates = _curve(thresholds, contamination_rates)
    text = f"{current_threshold:.3f} → {current_rate:.1%}"
    figure = go.Figure(
        [
            go.Scatter(
                x=thresholds, y=rates, mode="lines", name="flagged share", line_color=TEST_COLOUR
            ),
            _marked_point(current_threshold, current_rate, text, "current", (thresholds, rates)),
        ]
    )
    figure.update_yaxes(tickformat=".0%")
    return _styled(
        figure, "Contamination rate by threshold", THRESHOLD_AXIS, "test flagged as distractor"
    )


def metric_curve(
    thresholds: Sequence[float],
    values: Sequence[float],
    current_threshold: float,
    name: str = "MAP@5",
    *,
    best: tuple[float, float] | None = None,
) -> go.Figure:
    """A metric at each threshold, with the current threshold drawn and ``best`` marked if given.

    ``best`` is (threshold, value) as the caller chose it, e.g. ThresholdSweep.best_map_threshold():
    the curve is only sampled, so an argmax of its own could mark a different point of the same
    plateau from the one the page states. Its words are its legend entry: beside the point, the
    current threshold's line crosses them whenever the two thresholds are close.
    """
    thresholds, values = _curve(thresholds, values)
    traces = [go.Scatter(x=thresholds, y=values, mode="lines", name=name, line_color=TRAIN_COLOUR)]
    if best is not None:
        best_threshold, best_value = best
        traces.append(
            go.Scatter(
                x=[best_threshold],
                y=[best_value],
                mode="markers",
                name=f"best {name} {best_value:.3f} at {best_threshold:.3f}",
                cliponaxis=False,
                marker=MARKED_POINT,
            )
        )
    figure = go.Figure(traces)
    _threshold_line(figure, current_threshold, "current")
    return _styled(figure, f"{name} by threshold", THRESHOLD_AXIS, name)


def _floats(values: Sequence[float] | None) -> np.ndarray:
    return np.empty(0) if values is None else np.asarray(values, dtype=float).ravel()


def _curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _floats(x), _floats(y)
    if len(x) != len(y):
        raise ValueError(f"a curve needs as many y values as x values; got {len(x)} and {len(y)}")
    return x, y


def _marked_point(
    x: float, y: float, text: str, name: str, curve: tuple[np.ndarray, np.ndarray]
) -> go.Scatter:
    """A labelled point on ``curve`` (its x and y values), the label on the side with room for it."""
    return go.Scatter(
        x=[x],
        y=[y],
        mode="markers+text",
        text=[text],
        textposition=_label_position(x, y, *curve),
        cliponaxis=False,
        name=name,
        marker=MARKED_POINT,
    )


def _label_position(x: float, y: float, curve_x: np.ndarray, curve_y: np.ndarray) -> str:
    """Where a point's label goes so that it stays inside the plot: toward the middle of each axis.

    A label past a point in the right half runs off the plot's right edge (the cut "0.787 → 3"), and
    one above a point at the top of the curve runs into the title.
    """
    vertical = "bottom" if y > _middle(curve_y, y) else "top"
    horizontal = "left" if x > _middle(curve_x, x) else "right"
    return f"{vertical} {horizontal}"


def _middle(values: np.ndarray, point: float) -> float:
    """The middle of the range the axis shows: the curve's finite values and the point."""
    shown = np.append(values[np.isfinite(values)], point)
    return (shown.min() + shown.max()) / 2


def _threshold_line(figure: go.Figure, x: float, name: str) -> None:
    figure.add_vline(
        x=x,
        line={"color": GUIDE_COLOUR, "dash": "dash", "width": 2},
        annotation_text=f"{name} {x:.3f}",
        annotation_position="top",
    )


def _styled(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    # No plotly template: st.plotly_chart styles figures with Streamlit's theme, and naming a template
    # deep-copies it into every figure (36 of 58 ms to build the Distractors page's charts on each slider move).
    figure.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
    )
    return figure


def selected_rows(event, n_rows: int) -> list[int]:
    """Rows picked on a map scatter_map drew (a Plotly selection event): each point's customdata, first pick first,
    no repeats.

    Rows outside the table (a selection left over from other data) are dropped.
    """
    rows = []
    for point in event["selection"]["points"] if event else []:
        row = point.get("customdata")
        # Plotly hands back a list when a trace carries several customdata values per point.
        row = row[0] if isinstance(row, list) and row else row
        if isinstance(row, (int, float)) and 0 <= row < n_rows:
            rows.append(int(row))
    return list(dict.fromkeys(rows))
