"""AppTest runs of the Distractors page: the slider, the contamination box and what the workspace keeps."""

import pytest

from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.io.demo import write_demo_dataset
from core.retrieval.pipeline import analyse, load_embeddings
from core.retrieval.validation import conformal_threshold
from core.retrieval.placement import PLACEMENTS
from core.session.workspace import Workspace
from test_pages import assert_ran, displayed, fresh_server, metric_values, run_page  # noqa: F401 (fresh_server is autouse)

THRESHOLD = "Distractor threshold"


def slider_of(app):
    return next(s for s in app.slider if s.label == THRESHOLD)


def saved_thresholds(workspace_id: str) -> dict:
    """Every threshold the workspace holds, by its key."""
    return Workspace(workspace_id).settings("threshold:")


def test_the_slider_moves_the_counts_and_is_remembered():
    app = run_page("distractors", "slider1")
    assert_ran(app)
    before = metric_values(app)
    slider = slider_of(app)
    slider.set_value(round(slider.min + 0.8 * (slider.max - slider.min), 3)).run()
    assert_ran(app)
    after = metric_values(app)
    assert int(after["Flagged as distractors"]) > int(before["Flagged as distractors"])
    assert int(after["Flagged as distractors"]) + int(after["Kept"]) == int(before["Flagged as distractors"]) + int(before["Kept"])
    assert after["MAP@5"] != before["MAP@5"]
    assert float(after["Threshold"]) == slider_of(app).value
    assert list(saved_thresholds("slider1").values()) == [slider_of(app).value]

    reopened = run_page("distractors", "slider1")  # a reload: the workspace keeps the threshold
    assert metric_values(reopened)["Threshold"] == after["Threshold"]
    assert slider_of(reopened).value == slider_of(app).value


def test_the_target_contamination_sets_the_threshold_on_the_slider_grid():
    app = run_page("distractors", "contamination1")
    box = next(n for n in app.number_input if n.label == "Target contamination")
    box.set_value(0.5)
    next(b for b in app.button if b.label == "Set threshold").click().run()
    assert_ran(app)
    values = metric_values(app)
    n_test = int(values["Flagged as distractors"]) + int(values["Kept"])
    # The threshold sits on the slider's 0.001 grid, which can move it past a few near-tied scores.
    assert int(values["Flagged as distractors"]) == pytest.approx(0.5 * n_test, abs=0.02 * n_test)
    assert float(values["Threshold"]) == slider_of(app).value
    assert round(slider_of(app).value, 3) == slider_of(app).value
    assert list(saved_thresholds("contamination1").values()) == [slider_of(app).value]


def test_moving_the_slider_does_not_rewrite_the_contamination_box():
    # Two widgets writing each other's value raced under fast key presses and snapped the slider back.
    app = run_page("distractors", "box1")
    box_before = next(n for n in app.number_input if n.label == "Target contamination").value
    slider = slider_of(app)
    slider.set_value(round(slider.max - 0.01, 3)).run()
    assert_ran(app)
    assert next(n for n in app.number_input if n.label == "Target contamination").value == box_before


def test_a_tab_that_only_moves_dbscan_keeps_the_threshold_another_tab_saved():
    tab_a, tab_b = run_page("distractors", "tabs1"), run_page("distractors", "tabs1")
    slider = slider_of(tab_a)
    chosen = round(slider.min + 0.9 * (slider.max - slider.min), 3)
    slider.set_value(chosen).run()
    assert_ran(tab_a)
    assert slider_of(tab_b).value != chosen

    next(s for s in tab_b.slider if s.label.startswith("eps")).set_value(0.3).run()
    assert_ran(tab_b)
    assert list(saved_thresholds("tabs1").values()) == [chosen]
    assert slider_of(tab_b).value == chosen, "tab B shows the threshold tab A saved"
    assert any("changed to" in info.value and "another tab" in info.value for info in tab_b.info)


@pytest.fixture(scope="module")
def demo_analysis(tmp_path_factory):
    """The analysis the page makes of the demo with the default settings, built apart from the page."""
    folder = write_demo_dataset(tmp_path_factory.mktemp("demo"))
    return analyse(load_embeddings(folder, EmbedConfig(model=BASELINE_MODEL)).embeddings)


def test_the_placement_in_use_first_and_optimal_map_and_minus_one_per_rank_are_shown(demo_analysis):
    app = run_page("distractors", "placement1")
    assert_ran(app)
    assert any(f'Where "-1" goes: **{demo_analysis.placement}**' in displayed(c.value) for c in app.caption)
    threshold = slider_of(app).value
    values = metric_values(app)
    for placement in PLACEMENTS:
        assert values[f'MAP@5, "-1" {placement}'] == f"{float(demo_analysis.sweep_for(placement).map_at(threshold)):.4f}"
    assert values["MAP@5"] == values[f'MAP@5, "-1" {demo_analysis.placement}']
    assert values["Expected MAP@5"] == f"{demo_analysis.expected_map(threshold):.4f}"
    ranks = app.dataframe[0].value
    assert ranks["-1 at"].tolist() == ["1", "2", "3", "4", "5", "nowhere"]
    assert ranks["test images"].sum() == int(values["Flagged as distractors"]) + int(values["Kept"])
    assert ranks["test images"].iloc[0] == int(values["Flagged as distractors"])


def test_the_false_flag_rate_sets_a_conformal_threshold_and_shows_the_realised_rate(demo_analysis):
    app = run_page("distractors", "alpha1")
    alpha = 0.2
    next(n for n in app.number_input if n.label == "Max false-flag rate α").set_value(alpha)
    next(b for b in app.button if b.label == "Set threshold for α").click().run()
    assert_ran(app)
    bound = conformal_threshold(demo_analysis.evidence, alpha)
    threshold = slider_of(app).value
    assert bound - 0.001 < threshold <= bound  # on the slider's grid, never above the bound
    assert list(saved_thresholds("alpha1").values()) == [threshold]
    realised = demo_analysis.false_flag_share(threshold)
    assert metric_values(app)["Known-class images flagged"] == f"{realised:.1%}"
    known = int((demo_analysis.truth != "-1").sum())
    assert 0 < realised <= alpha + 3 * (alpha * (1 - alpha) / known) ** 0.5  # the bound, within its sampling margin


def test_every_page_scores_at_the_threshold_the_slider_shows():
    # The default rule's threshold is on no grid; every page uses it rounded to the slider's step.
    distractors, evaluate = run_page("distractors", "agree1"), run_page("evaluate", "agree1")
    assert_ran(distractors)
    assert_ran(evaluate)
    shown = metric_values(distractors)
    assert float(shown["Threshold"]) == slider_of(distractors).value
    assert float(shown["MAP@5"]) == pytest.approx(float(metric_values(evaluate)["MAP@5"]), abs=5e-4)  # Evaluate shows 3 decimals
    assert any(f"**{shown['Threshold']}**" in caption.value for caption in evaluate.caption)
