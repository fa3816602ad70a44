"""Tests for core.maps.figures: trace types, point counts, row mapping, marked thresholds and optima."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.detection.distractors import ThresholdSweep
from core.maps.figures import (
    COLOUR_MODES,
    DISTRACTOR_COLOUR,
    UNKNOWN_COLOUR,
    contamination_curve,
    map_points,
    metric_curve,
    scatter_map,
    score_histogram,
)
from core.maps.projection import Projection, ProjectionConfig
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

N_TRAIN, N_TEST = 30, 50
CLASSES = ["class0", "class1", "class2", "class3"]


@pytest.fixture
def embeddings():
    """Train and test interleaved, so row order and split order differ."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    splits = np.array([TRAIN if i % 8 < 3 else TEST for i in range(n)], dtype=object)
    labels = np.full(n, None, dtype=object)
    labels[splits == TRAIN] = [CLASSES[i % len(CLASSES)] for i in range(N_TRAIN)]
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    return Embeddings(
        np.array([f"img{i}.jpg" for i in range(n)]), splits, labels, vectors, "test-model"
    )


@pytest.fixture
def projection(embeddings):
    rng = np.random.default_rng(1)
    n_train = int(embeddings.mask(TRAIN).sum())
    n_test = len(embeddings.ids) - n_train
    return Projection(
        rng.normal(size=(n_train, 2)).astype(np.float32),
        rng.normal(size=(n_test, 2)).astype(np.float32),
        [],
        ProjectionConfig(),
    )


@pytest.fixture
def points(embeddings, projection):
    rng = np.random.default_rng(2)
    n = len(embeddings.ids)
    flags = embeddings.mask(TEST) & (rng.random(n) < 0.3)
    labels = np.where(flags, DISTRACTOR, embeddings.labels).astype(object)
    labels[embeddings.mask(TEST) & ~flags] = "class1"
    labels[5] = None
    scores = rng.random(n)
    scores[[0, 3]] = np.nan
    return map_points(embeddings, projection, labels=labels, flags=flags, scores=scores)


def test_map_points_places_train_and_test_coordinates_on_their_rows(embeddings, projection):
    points = map_points(embeddings, projection)
    train_rows = points[points["split"] == TRAIN]
    np.testing.assert_array_equal(train_rows[["x", "y"]].to_numpy(), projection.train_xy)
    test_rows = points[points["split"] == TEST]
    np.testing.assert_array_equal(test_rows[["x", "y"]].to_numpy(), projection.test_xy)
    assert points["row"].tolist() == list(range(len(embeddings.ids)))
    assert points["id"].tolist() == embeddings.ids.tolist()
    assert "flag" not in points and "score" not in points


def test_map_points_rejects_a_projection_of_other_embeddings(embeddings, projection):
    shorter = Projection(projection.train_xy[:-1], projection.test_xy, [], projection.config)
    message = r"projection has 29 train and 50 test points but the embeddings have 30 and 50"
    with pytest.raises(ValueError, match=message):
        map_points(embeddings, shorter)
    with pytest.raises(ValueError, match=r"one value per embedding; lengths are .*'score': 3"):
        map_points(embeddings, projection, scores=[0.1, 0.2, 0.3])


@pytest.mark.parametrize("colour_by", COLOUR_MODES)
def test_scatter_map_draws_every_point_once_with_its_row(points, colour_by):
    figure = scatter_map(points, colour_by)
    assert figure.data and all(isinstance(trace, go.Scattergl) for trace in figure.data)
    rows = np.concatenate([trace.customdata for trace in figure.data])
    assert sorted(rows.tolist()) == points["row"].tolist()
    for trace in figure.data:
        by_row = points.set_index("row").loc[list(trace.customdata)]
        np.testing.assert_array_equal(trace.x, by_row["x"].to_numpy())
        np.testing.assert_array_equal(trace.y, by_row["y"].to_numpy())
        assert trace.name.endswith(f"({len(trace.customdata)})")
    # Drawn last: test, where the distractors are, stays on top of the train references.
    assert figure.data[-1].name.startswith(TEST)
    assert figure.layout.dragmode == "lasso"
    assert figure.layout.xaxis.title.text == "UMAP 1"


def test_scatter_map_customdata_follows_the_row_column_not_the_position(points):
    shifted = points.assign(row=points["row"] + 1000)
    rows = np.concatenate([trace.customdata for trace in scatter_map(shifted).data])
    assert sorted(rows.tolist()) == list(range(1000, 1000 + len(points)))


def _trace(figure: go.Figure, name_start: str) -> go.Scattergl:
    (trace,) = [trace for trace in figure.data if trace.name.startswith(name_start)]
    return trace


def test_flag_mode_puts_flagged_test_points_in_a_red_trace(points):
    figure = scatter_map(points, "flag")
    flagged = _trace(figure, "test flagged distractor")
    expected = points.loc[points["flag"] & (points["split"] == TEST), "row"]
    assert sorted(flagged.customdata.tolist()) == sorted(expected.tolist())
    assert flagged.marker.color == DISTRACTOR_COLOUR
    assert figure.data[-1] is flagged  # drawn over kept test and train


def _random_points(n_points: int, n_train: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    splits = np.where(np.arange(n_points) < n_train, TRAIN, TEST)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n_points),
            "y": rng.normal(size=n_points),
            "split": splits,
            "id": [f"img{i}" for i in range(n_points)],
            "label": None,
            # shuffled, so customdata must carry rows, not positions
            "row": rng.permutation(n_points),
            "flag": (splits == TEST) & (rng.random(n_points) < 0.3),
        }
    )


def test_a_130k_point_map_is_webgl_with_every_row_once():
    points = _random_points(130_000, 30_000)
    figure = scatter_map(points, "flag")
    assert all(isinstance(trace, go.Scattergl) for trace in figure.data)
    rows = np.concatenate([trace.customdata for trace in figure.data])
    assert np.array_equal(np.sort(rows), np.arange(len(points)))
    for trace in figure.data:  # each customdata row is the point drawn at that position
        np.testing.assert_array_equal(
            trace.x, points.set_index("row").loc[trace.customdata, "x"].to_numpy()
        )


def test_markers_shrink_and_fade_as_the_map_grows():
    markers = [
        scatter_map(_random_points(n, n // 4), "split").data[0].marker
        for n in (200, 13_000, 130_000)
    ]
    sizes, opacities = [marker.size for marker in markers], [marker.opacity for marker in markers]
    assert sizes[0] > sizes[1] > sizes[2] >= 3
    assert opacities[0] > opacities[1] > opacities[2] >= 0.3


def test_flagged_points_stay_larger_and_more_opaque_than_the_rest_at_100k():
    figure = scatter_map(_random_points(100_000, 30_000), "flag")
    flagged, kept = (
        _trace(figure, "test flagged distractor").marker,
        _trace(figure, "test kept").marker,
    )
    assert (kept.size, kept.opacity) == (3.0, pytest.approx(0.3))
    assert flagged.size > kept.size and flagged.opacity >= 2 * kept.opacity


def test_label_mode_colours_classes_apart_distractors_red_and_unknown_grey(points):
    figure = scatter_map(points, "label")
    assert figure.layout.showlegend is False and "colour = class" in figure.layout.title.text
    label_of_row = points.set_index("row")["label"]
    pairs = [
        (label, colour)
        for trace in figure.data
        for label, colour in zip(label_of_row[trace.customdata], trace.marker.color)
    ]
    unknown = [colour for label, colour in pairs if pd.isna(label)]
    distractors = [colour for label, colour in pairs if label == DISTRACTOR]
    assert unknown and set(unknown) == {UNKNOWN_COLOUR}
    assert distractors and set(distractors) == {DISTRACTOR_COLOUR}
    class_colours = {(label, colour) for label, colour in pairs if label in CLASSES}
    assert len(class_colours) == len(CLASSES)  # every point of a class has its class's colour
    distinct = {colour for _, colour in class_colours} | {UNKNOWN_COLOUR, DISTRACTOR_COLOUR}
    assert len(distinct) == len(CLASSES) + 2


def test_score_mode_shares_one_colour_scale_and_greys_missing_scores(points):
    figure = scatter_map(points, "score")
    unscored = _trace(figure, "no score")
    assert sorted(unscored.customdata.tolist()) == [0, 3]
    for split in (TRAIN, TEST):
        trace = _trace(figure, split)
        assert trace.marker.coloraxis == "coloraxis"
        expected = points.set_index("row").loc[list(trace.customdata), "score"]
        np.testing.assert_allclose(trace.marker.color, expected)
    assert figure.layout.coloraxis.colorscale


@pytest.mark.parametrize(
    ("colour_by", "drop", "message"),
    [
        ("flag", "flag", r"colour_by='flag' needs columns \['flag'\]"),
        ("split", "row", r"colour_by='split' needs columns \['row'\]"),
        (
            "shape",
            None,
            r"colour_by 'shape' is not known; use one of \('split', 'label', 'flag', 'score'\)",
        ),
    ],
)
def test_scatter_map_rejects_bad_requests(points, colour_by, drop, message):
    with pytest.raises(ValueError, match=message):
        scatter_map(points.drop(columns=[drop] if drop else []), colour_by)


def test_score_histogram_draws_test_bars_and_a_train_outline_on_shared_bins_with_the_threshold():
    rng = np.random.default_rng(0)
    test_scores, train_scores = rng.uniform(0.5, 1.0, 300), rng.uniform(0.7, 1.0, 90)
    figure = score_histogram(test_scores, train_scores, threshold=0.78, bins=20)
    bars, outline = figure.data
    assert isinstance(bars, go.Bar) and isinstance(outline, go.Scatter)
    assert (bars.name, outline.name) == ("test (300)", "train leave-one-out (90)")
    assert outline.line.shape == "hv" and figure.data[-1] is outline  # drawn over the bars
    assert sum(bars.y) == pytest.approx(1.0) and sum(outline.y) == pytest.approx(1.0)
    edges = np.histogram_bin_edges(np.concatenate((test_scores, train_scores)), bins=20)
    np.testing.assert_allclose(np.asarray(bars.x) - np.asarray(bars.width) / 2, edges[:-1])
    np.testing.assert_allclose(outline.x[1:], edges)  # the same bins
    below = (test_scores < edges[1]).mean()
    assert bars.y[0] == pytest.approx(below) and outline.y[1] == 0.0  # no train score under 0.7
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == 0.78


def test_score_histogram_size_does_not_grow_with_the_number_of_scores():
    def json_size(n: int) -> int:
        rng = np.random.default_rng(n)
        return len(
            score_histogram(rng.uniform(0.3, 1.0, n), rng.uniform(0.6, 1.0, n // 3), 0.7).to_json()
        )

    small, large = json_size(1_000), json_size(100_000)
    # 7 KB of it is the template; every score was 220 KB at 13k
    assert large < 1.2 * small and large < 15_000


def test_score_histogram_without_train_scores_draws_test_only():
    figure = score_histogram([0.2, 0.9, 0.95], None, threshold=0.5)
    assert [trace.name for trace in figure.data] == ["test (3)"]


def test_score_histogram_rejects_zero_bins():
    with pytest.raises(ValueError, match="bins=0: use an integer >= 1"):
        score_histogram([0.2, 0.9], None, threshold=0.5, bins=0)


def test_contamination_curve_marks_the_current_point():
    thresholds = np.linspace(0.5, 1.0, 51)
    rates = np.clip((thresholds - 0.5) * 2, 0, 1)
    figure = contamination_curve(thresholds, rates, current_threshold=0.65, current_rate=0.3)
    curve, current = figure.data
    assert len(curve.x) == 51 and curve.mode == "lines"
    assert (current.x[0], current.y[0]) == (0.65, 0.3)
    assert current.text[0] == "0.650 → 30.0%"


@pytest.mark.parametrize(
    ("threshold", "rate", "position"),
    [
        (0.52, 0.04, "top right"),
        (0.98, 0.3, "top left"),
        (0.52, 0.96, "bottom right"),
        (0.98, 0.96, "bottom left"),
    ],
    ids=["low left", "near the right edge", "near the top", "top right corner"],
)
def test_a_point_label_opens_toward_the_middle_of_the_plot_and_is_never_clipped(
    threshold, rate, position
):
    thresholds = np.linspace(0.5, 1.0, 51)
    figure = contamination_curve(thresholds, np.linspace(0, 1, 51), threshold, rate)
    current = figure.data[-1]
    assert current.textposition == position
    assert current.cliponaxis is False


def test_metric_curve_marks_the_best_point_it_is_given_and_the_current_threshold():
    thresholds = np.linspace(0.5, 1.0, 11)
    values = np.array([0.1, 0.3, np.nan, 0.6, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1])
    figure = metric_curve(
        thresholds, values, current_threshold=0.6, name="MAP@5", best=(0.725, 0.8)
    )
    _, best = figure.data
    assert (best.x[0], best.y[0]) == (
        0.725,
        0.8,
    )  # between two grid points: the caller's answer, not an argmax
    # Its words are in the legend, out of the plot the current threshold's line crosses.
    assert best.name == "best MAP@5 0.800 at 0.725" and best.showlegend is not False
    assert best.mode == "markers" and best.text is None and best.cliponaxis is False
    (line,) = figure.layout.shapes
    assert line.x0 == 0.6
    assert figure.layout.yaxis.title.text == "MAP@5"


def test_metric_curve_without_a_best_point_marks_none():
    figure = metric_curve([0.5, 0.6], [0.2, 0.4], current_threshold=0.55)
    assert len(figure.data) == 1


def test_the_best_threshold_marked_on_the_curve_is_the_sweep_answer_on_a_plateau():
    # MAP@k is 1 for every threshold in (0.40, 0.60]: the grid's argmax would be its first grid point.
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    sweep = ThresholdSweep(
        scores, ap_if_flagged=(scores < 0.5).astype(float), ap_if_kept=(scores > 0.5).astype(float)
    )
    grid = sweep.grid()
    best = sweep.best_map_threshold()
    marker = metric_curve(grid, sweep.map_at(grid), current_threshold=0.3, best=best).data[-1]
    assert (marker.x[0], marker.y[0]) == best == (pytest.approx(0.5), 1.0)
    assert grid[np.argmax(sweep.map_at(grid))] < 0.45


def test_curves_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="as many y values as x values; got 3 and 2"):
        metric_curve([0.1, 0.2, 0.3], [0.5, 0.6], current_threshold=0.2)


def test_analysis_map_points_puts_scores_flags_and_predictions_on_the_right_rows(
    embeddings, projection
):
    from core.analysis.pipeline import analyse
    from core.maps.figures import analysis_map_points

    analysis = analyse(embeddings)
    threshold = float(np.median(analysis.scores))
    points = analysis_map_points(
        embeddings, analysis, projection, threshold, predicted_test_labels=True
    )
    train, test = points[points["split"] == TRAIN], points[points["split"] == TEST]
    assert test["id"].tolist() == analysis.test.ids.tolist()
    np.testing.assert_array_equal(test["flag"].to_numpy(), analysis.scores < threshold)
    assert not train["flag"].any()
    np.testing.assert_allclose(test["score"].to_numpy(), analysis.scores)
    np.testing.assert_allclose(train["score"].to_numpy(), analysis.train_loo_scores)
    assert test["label"].tolist() == [row[0] for row in analysis.predictions(threshold)]
    assert (test["label"] == DISTRACTOR).sum() == test["flag"].sum() > 0
    assert train["label"].tolist() == analysis.train.labels.tolist()
