"""AppTest runs of the Distractors page: the slider, the contamination box and what the workspace keeps."""

import pytest
from test_pages import (
    assert_ran,
    displayed,
    live_slider,
    metrics,
    run_page,
    set_threshold_by_contamination,
    slider_metrics,
    slider_value,
    workspace_with,
)

from core.analysis.loading import load_embeddings
from core.analysis.pipeline import analyse
from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.io.demo import write_demo_dataset
from core.prediction.placement import PLACEMENTS
from core.prediction.validation import conformal_threshold
from core.session.vectors import DASHBOARD_DEFAULTS
from core.session.workspace import Workspace

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")


def flagging_30_percent(workspace_id: str) -> str:
    """A workspace whose default threshold flags 30%, so a box set to 80% or 90% moves it well away."""
    return workspace_with(workspace_id, predict_config={"contamination": 0.3})


def saved_thresholds(workspace_id: str) -> dict:
    """Every threshold the workspace holds, by its key."""
    return Workspace(workspace_id).settings("threshold:")


def test_the_slider_is_sent_with_every_position_and_a_set_threshold_moves_it_and_is_remembered():
    app = run_page("distractors", flagging_30_percent("slider1"))
    assert_ran(app)
    panel, before = live_slider(app), slider_metrics(app)
    positions = len(panel["thresholds"])
    assert (
        panel["label"] == "Distractor threshold"
        and positions == round((panel["high"] - panel["low"]) * 1000) + 1
    )
    assert all(len(metric["shown"]) == positions for row in panel["rows"] for metric in row)
    high = set_threshold_by_contamination(app, 0.8)
    assert_ran(app)
    after = slider_metrics(app)
    assert live_slider(app)["origin"] > panel["origin"], (
        "a threshold set on the server moves the browser's slider"
    )
    assert int(after["Flagged as distractors"]) > int(before["Flagged as distractors"])
    assert int(after["Flagged as distractors"]) + int(after["Kept"]) == int(
        before["Flagged as distractors"]
    ) + int(before["Kept"])
    assert after["MAP@5"] != before["MAP@5"]
    assert float(after["Threshold"]) == high
    assert list(saved_thresholds("slider1").values()) == [high]

    reopened = run_page("distractors", "slider1")  # a reload: the workspace keeps the threshold
    assert slider_metrics(reopened)["Threshold"] == after["Threshold"]
    assert slider_value(reopened) == high


def test_the_target_contamination_sets_the_threshold_on_the_slider_grid():
    app = run_page("distractors", "contamination1")
    threshold = set_threshold_by_contamination(app, 0.5)
    assert_ran(app)
    values = slider_metrics(app)
    n_test = int(values["Flagged as distractors"]) + int(values["Kept"])
    # The threshold sits on the slider's 0.001 grid, which can move it past a few near-tied scores.
    assert int(values["Flagged as distractors"]) == pytest.approx(0.5 * n_test, abs=0.02 * n_test)
    assert float(values["Threshold"]) == threshold == round(threshold, 3)
    assert list(saved_thresholds("contamination1").values()) == [threshold]


def test_the_charts_follow_every_position_and_mark_the_best_threshold_the_caption_names(
    demo_analysis,
):
    app = run_page("distractors", "charts1")
    assert_ran(app)
    panel = live_slider(app)
    histogram, contamination, expected_curve, map_curve = panel["charts"]
    band = expected_curve["band"]
    assert len(band["low"]) == len(band["high"]) == len(panel["thresholds"])
    assert all(
        low <= value <= high
        for low, value, high in zip(band["low"], expected_curve["line"], band["high"])
    )
    assert any(
        caption.value.startswith("Without the answers: estimated distractor share")
        and "90% interval" in caption.value
        for caption in app.caption
    )
    assert sum(histogram["bars"]["heights"]) == pytest.approx(1) and sum(
        histogram["steps"]["heights"]
    ) == pytest.approx(1)
    flagged = next(
        metric
        for row in panel["rows"]
        for metric in row
        if metric["label"] == "Flagged as distractors"
    )["counts"]
    n_test = len(demo_analysis.scores)
    assert contamination["line"] == pytest.approx([count / n_test for count in flagged])
    assert len(map_curve["line"]) == len(map_curve["marker_labels"]) == len(panel["thresholds"])
    best_threshold, best_map = demo_analysis.sweep.best_map_threshold()
    assert map_curve["best"]["label"] == f"best {best_map:.4f} at {best_threshold:.3f}"
    assert any(
        f"the best threshold is {best_threshold:.3f} (MAP@5 {best_map:.4f})" in caption.value
        for caption in app.caption
    )


def test_a_tab_that_only_moves_dbscan_keeps_the_threshold_another_tab_saved():
    flagging_30_percent("tabs1")
    tab_a, tab_b = run_page("distractors", "tabs1"), run_page("distractors", "tabs1")
    chosen = set_threshold_by_contamination(tab_a, 0.9)
    assert_ran(tab_a)
    assert slider_value(tab_b) != chosen
    origin_b = live_slider(tab_b)["origin"]

    next(s for s in tab_b.slider if s.label.startswith("eps")).set_value(0.3).run()
    assert_ran(tab_b)
    assert list(saved_thresholds("tabs1").values()) == [chosen]
    assert slider_value(tab_b) == chosen, "tab B shows the threshold tab A saved"
    assert live_slider(tab_b)["origin"] > origin_b, "and moves its slider there"
    assert any("changed to" in info.value and "another tab" in info.value for info in tab_b.info)


@pytest.fixture(scope="module")
def demo_analysis(tmp_path_factory):
    """The analysis the page makes of the demo with the default settings, built apart from the page."""
    folder = write_demo_dataset(tmp_path_factory.mktemp("demo"))
    return analyse(
        load_embeddings(folder, EmbedConfig(model=BASELINE_MODEL)).embeddings, DASHBOARD_DEFAULTS
    )


def test_the_placement_in_use_first_and_optimal_map_and_minus_one_per_rank_are_shown(demo_analysis):
    app = run_page("distractors", "placement1")
    assert_ran(app)
    assert any(
        f'Where "-1" goes: **{demo_analysis.placement}**' in displayed(c.value) for c in app.caption
    )
    threshold = slider_value(app)
    values = slider_metrics(app)
    for placement in PLACEMENTS:
        assert (
            values[f'MAP@5, "-1" {placement}']
            == f"{float(demo_analysis.sweep_for(placement).map_at(threshold)):.4f}"
        )
    assert values["MAP@5"] == values[f'MAP@5, "-1" {demo_analysis.placement}']
    low, high = demo_analysis.expected_map_interval(threshold)
    assert (
        values["Expected MAP@5"]
        == f"{demo_analysis.expected_map(threshold):.3f} ({low:.2f}–{high:.2f})"
    )
    ranks = live_slider(app)["ranks"]
    counts = ranks["counts"][live_slider(app)["thresholds"].index(f"{threshold:.3f}")]
    assert (ranks["label"], ranks["names"]) == ("-1 at", ["1", "2", "3", "4", "5", "nowhere"])
    assert sum(counts) == int(values["Flagged as distractors"]) + int(values["Kept"])
    assert counts[0] == int(values["Flagged as distractors"])


def test_the_false_flag_rate_sets_a_conformal_threshold_and_shows_the_realised_rate(demo_analysis):
    app = run_page("distractors", "alpha1")
    alpha = 0.2
    next(n for n in app.number_input if n.label == "Max false-flag rate α").set_value(alpha)
    next(b for b in app.button if b.label == "Set threshold for α").click().run()
    assert_ran(app)
    bound = conformal_threshold(demo_analysis.evidence, alpha)
    threshold = slider_value(app)
    assert bound - 0.001 < threshold <= bound  # on the slider's grid, never above the bound
    assert list(saved_thresholds("alpha1").values()) == [threshold]
    realised = demo_analysis.false_flag_share(threshold)
    assert slider_metrics(app)["Known-class images flagged"] == f"{realised:.1%}"
    known = int((demo_analysis.truth != "-1").sum())
    # the bound, within its sampling margin
    assert 0 < realised <= alpha + 3 * (alpha * (1 - alpha) / known) ** 0.5


def test_every_page_scores_at_the_threshold_the_slider_shows():
    # The default rule's threshold is on no grid; every page uses it rounded to the slider's step.
    distractors, evaluate = run_page("distractors", "agree1"), run_page("evaluate", "agree1")
    assert_ran(distractors)
    assert_ran(evaluate)
    shown = slider_metrics(distractors)
    assert float(shown["Threshold"]) == slider_value(distractors)
    # Evaluate shows 3 decimals
    assert float(shown["MAP@5"]) == pytest.approx(float(metrics(evaluate)["MAP@5"]), abs=5e-4)
    assert any(f"**{shown['Threshold']}**" in caption.value for caption in evaluate.caption)


def test_the_page_says_when_the_figures_without_the_answers_are_uncertain(demo_analysis):
    note = demo_analysis.uncertainty_note()
    assert note is not None and "uncertain" in note  # the demo: six train classes of three images
    app = run_page("distractors", "uncertain1")
    assert_ran(app)
    assert f"Note: {note}" in [displayed(caption.value) for caption in app.caption]
