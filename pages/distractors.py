"""Distractors page: the live threshold slider, its counts, curves and metrics, and DBSCAN."""

import math

import numpy as np
import streamlit as st

from core.analysis.threshold_steps import THRESHOLD_DECIMALS, threshold_steps
from core.detection.distractors import DbscanConfig
from core.display import count_text
from core.maps.figures import THRESHOLD_AXIS, score_shares
from core.prediction.placement import PLACEMENTS
from core.prediction.validation import INTERVAL_LEFT_OUT, conformal_threshold
from core.session.thresholds import TabThreshold
from pages import state, ui
from pages.live_threshold import (
    Binned,
    LiveChart,
    LiveMetric,
    RankTable,
    live_threshold,
    rested_threshold,
)

THRESHOLD_SLIDER = "Distractor threshold"
INTERVAL = 1 - INTERVAL_LEFT_OUT

st.title("Distractors")
current = state.active_analysis()

analysis = current.analysis
sweep = analysis.sweep
steps = threshold_steps(analysis, THRESHOLD_DECIMALS)
# one answer for the chart's mark and the caption
best = sweep.best_map_threshold() if sweep.has_map else None
# This tab's view of the saved threshold, and the keys of the widgets that set it, per workspace,
# dataset and vectors.
threshold_state = (
    f"threshold-{current.ws.id}-{current.entry.name}-{current.loaded.embeddings.model}"
)
tab = st.session_state.setdefault(threshold_state, TabThreshold())
slider_key = threshold_state + "-slider"


st.caption(
    f"A test image is flagged as a distractor when its best cosine similarity to any train image is below "
    f"the threshold. Default rule: {analysis.threshold_source} → {analysis.threshold:.3f}."
)
if (figures := analysis.without_truth()) is not None:
    st.caption(
        f"Without the answers: {figures}. The intervals hold what train cannot pin down (its classes drawn again "
        "and again), the model's bias on test sets made of the train classes each draw left out, and the test "
        "set's sampling noise; with 2–3 images a class they run wide, and they assume distractors score against "
        "train as held-out train classes do."
    )
if analysis.validation is not None and analysis.validation.fell_back:
    st.warning(
        f"The automatic threshold is not confident: {ui.plain(analysis.validation.fell_back_because)}. So it "
        f"flags {analysis.config.contamination:.0%}, the contamination; more train images a class would help."
    )
st.caption(
    f'Where "-1" goes: **{analysis.placement}** ({ui.plain(analysis.placement_source)}). "first" puts it first for '
    'flagged items only; "optimal" also puts it, for every other item, at the rank with the highest expected '
    f"AP@{analysis.config.k} (2–{analysis.config.k} or nowhere). Choose it on the **Evaluate & export** page."
)


def _set_threshold(value: float) -> None:
    """A threshold chosen on the server (a box): saved, and the slider is moved to it."""
    current.save_threshold(tab.set(value))


def _take_slider_threshold() -> None:
    current.save_threshold(tab.keep(steps.snap(rested_threshold(slider_key))))


def _set_threshold_from_contamination() -> None:
    # The box only sets the slider and never follows it: two widgets writing each other's value race
    # when key presses arrive faster than reruns, and the slider snaps back.
    _set_threshold(steps.snap(sweep.threshold_for(st.session_state[threshold_state + "-target"])))


def _set_threshold_from_false_flag() -> None:
    # Like the contamination box: it sets the slider and never follows it. Rounded down to the grid
    # so the threshold shown keeps the bound.
    alpha = st.session_state[threshold_state + "-alpha"]
    _set_threshold(steps.snap(conformal_threshold(analysis.evidence, alpha), rounding=math.floor))


def slider_metrics() -> list[list[LiveMetric]]:
    """The figures under the slider, each at every slider position (threshold_steps)."""
    k, n = analysis.config.k, sweep.n

    def shown(values, text) -> list[str]:
        return [text(float(value)) for value in values]

    def fixed(decimals):
        return lambda value: f"{value:.{decimals}f}"

    def percent(value):
        return f"{value:.1%}"

    rows = [
        [
            LiveMetric(
                "Flagged as distractors",
                shown(steps.flagged, count_text),
                counts=steps.flagged.tolist(),
            ),
            LiveMetric("Kept", shown(n - steps.flagged, count_text)),
            LiveMetric("Contamination", shown(steps.flagged / n, percent)),
            LiveMetric("Threshold", shown(steps.thresholds, fixed(THRESHOLD_DECIMALS))),
        ]
    ]
    expected = (
        []
        if steps.expected_map is None
        else [
            LiveMetric(
                f"Expected MAP@{k}",
                [
                    f"{value:.3f} ({low:.2f}–{high:.2f})"
                    for value, low, high in zip(
                        steps.expected_map, steps.expected_map_low, steps.expected_map_high
                    )
                ]
                if steps.expected_map_low is not None
                else shown(steps.expected_map, fixed(4)),
                help="What the placement model expects of this threshold and placement, without test truth, and "
                f"the {INTERVAL:.0%} interval where the measured MAP@{k} should fall (class bootstraps of train, the "
                "model's bias on pseudo-tests of the classes each left out, and the test set's sampling noise).",
            )
        ]
    )
    if steps.map_by_placement:
        rows.append(
            [
                LiveMetric(f"MAP@{k}", shown(steps.map_by_placement[analysis.placement], fixed(4))),
                LiveMetric("Precision", shown(steps.precision, fixed(3))),
                LiveMetric("Recall", shown(steps.recall, fixed(3))),
                LiveMetric("F1", shown(steps.f1, fixed(3))),
            ]
        )
        rows.append(
            [
                *(
                    LiveMetric(
                        f'MAP@{k}, "-1" {placement}',
                        shown(steps.map_by_placement[placement], fixed(4)),
                    )
                    for placement in PLACEMENTS
                ),
                LiveMetric(
                    "Known-class images flagged",
                    ["–"] * len(steps.thresholds)
                    if steps.known_flagged is None
                    else shown(steps.known_flagged, percent),
                    help="The realised false-flag rate: the share of test images whose class is in train that this threshold flags.",
                ),
                *expected,
            ]
        )
    elif expected:
        rows.append(expected)
    return rows


def slider_charts() -> list[LiveChart]:
    """The score histogram and the curves over thresholds, their markers at every slider position."""
    k, n, at = (
        analysis.config.k,
        sweep.n,
        [f"{threshold:.{THRESHOLD_DECIMALS}f}" for threshold in steps.thresholds],
    )
    train_scores = analysis.train_loo_scores
    edges, test_shares, train_shares = score_shares(analysis.scores, train_scores)
    charts = [
        LiveChart(
            "Distractor scores: test vs train leave-one-out",
            "max cosine similarity to train",
            "share of the set",
            "percent",
            [f"below = distractor · {threshold}" for threshold in at],
            bars=Binned(edges.tolist(), test_shares.tolist(), f"test ({count_text(n)})"),
            steps=Binned(
                edges.tolist(),
                train_shares.tolist(),
                f"train leave-one-out ({count_text(len(train_scores))})",
            )
            if len(train_scores)
            else None,
        )
    ]
    contamination = steps.flagged / n
    charts.append(
        LiveChart(
            "Contamination rate by threshold",
            THRESHOLD_AXIS,
            "test flagged as distractor",
            "percent",
            [f"{threshold} → {share:.1%}" for threshold, share in zip(at, contamination)],
            line=contamination.tolist(),
            y_max=1.0,
        )
    )
    if steps.expected_map_low is not None:
        charts.append(
            LiveChart(
                f"Expected MAP@{k} by threshold, without truth",
                THRESHOLD_AXIS,
                f"expected MAP@{k}",
                "fixed",
                [
                    f"expected {value:.3f} ({low:.2f}–{high:.2f}) at {threshold}"
                    for threshold, value, low, high in zip(
                        at, steps.expected_map, steps.expected_map_low, steps.expected_map_high
                    )
                ],
                line=steps.expected_map.tolist(),
                band={
                    "low": steps.expected_map_low.tolist(),
                    "high": steps.expected_map_high.tolist(),
                    "name": f"{INTERVAL:.0%} interval of the measured MAP@{k}",
                },
            )
        )
    if best is not None:
        values = steps.map_by_placement[analysis.placement]
        best_threshold, best_map = best
        charts.append(
            LiveChart(
                f"MAP@{k} by threshold",
                THRESHOLD_AXIS,
                f"MAP@{k}",
                "fixed",
                [f"MAP@{k} {value:.4f} at {threshold}" for threshold, value in zip(at, values)],
                line=values.tolist(),
                best={
                    "x": best_threshold,
                    "y": best_map,
                    "label": f"best {best_map:.4f} at {best_threshold:.3f}",
                },
            )
        )
    return charts


@st.fragment
def threshold_panel() -> None:
    saved = steps.snap(current.threshold)
    if tab.follow(saved):
        st.info(
            f"The threshold was changed to {saved:.3f} in another tab of this workspace; the slider now shows it."
        )
    left, right = st.columns([3, 1])
    with right, st.form(threshold_state + "-form", border=False):
        st.number_input(
            "Target contamination",
            min_value=0.0,
            max_value=1.0,
            value=float(analysis.config.contamination),
            step=0.01,
            format="%.3f",
            key=threshold_state + "-target",
            help="The share of test images to flag: sets the threshold that flags that share.",
        )
        st.form_submit_button("Set threshold", on_click=_set_threshold_from_contamination)
    with right, st.form(threshold_state + "-alpha-form", border=False):
        st.number_input(
            "Max false-flag rate α",
            min_value=0.001,
            max_value=0.999,
            value=0.05,
            step=0.01,
            format="%.3f",
            key=threshold_state + "-alpha",
            disabled=analysis.evidence is None,
            help="Sets the threshold that flags at most this share of test images whose class is in train "
            "(split conformal on train leave-one-out scores). It assumes those images score like train images "
            "do against the rest of train; it does not bound how many distractors are missed.",
        )
        st.form_submit_button(
            "Set threshold for α",
            on_click=_set_threshold_from_false_flag,
            disabled=analysis.evidence is None,
        )
    threshold = tab.shown
    with left:
        k = analysis.config.k
        ranks = RankTable(
            "-1 at",
            "test images",
            [*map(str, range(1, k + 1)), "nowhere"],
            steps.minus_one_at.tolist(),
        )
        live_threshold(
            THRESHOLD_SLIDER,
            steps,
            THRESHOLD_DECIMALS,
            slider_metrics(),
            ranks,
            slider_charts(),
            threshold,
            tab.origin,
            slider_key,
            _take_slider_threshold,
        )
        if not sweep.has_map:
            st.caption(
                f"No test truth: MAP@{k}, precision and recall need test images in test/<label>/ folders."
            )
        st.caption(
            "The figures and charts follow every move of the slider; the images below follow once it rests."
        )
    previous = tab.moved_from()
    if best is not None:
        best_threshold, best_map = best
        st.caption(
            f"With the test truth, the best threshold is {best_threshold:.3f} (MAP@{k} {best_map:.4f}): the middle "
            "of the widest range of thresholds that reach it, the choice least sensitive to noise in the scores."
        )

    between = (analysis.scores >= min(previous, threshold)) & (
        analysis.scores < max(previous, threshold)
    )
    flipped = np.flatnonzero(between)
    st.subheader(f"What flips ({count_text(len(flipped))})")
    if len(flipped) == 0:
        st.caption(
            "Move the slider: the images whose verdict changes appear here."
            if previous == threshold
            else f"No image changes its verdict between {previous:.3f} and {threshold:.3f}."
        )
        return
    now_flagged = threshold > previous
    shown = flipped[np.argsort(analysis.scores[flipped])][:16]
    st.caption(
        f"{'Newly flagged' if now_flagged else 'No longer flagged'} between {previous:.3f} and {threshold:.3f}"
        + (
            f"; showing the {len(shown)} lowest-scoring of {count_text(len(flipped))}."
            if len(shown) < len(flipped)
            else "."
        )
    )
    ids = [str(analysis.test.ids[row]) for row in shown]
    captions = [
        f"{item_id} · {analysis.scores[row]:.3f}"
        + ("" if analysis.truth is None else f" · truth {analysis.truth[row]}")
        for item_id, row in zip(ids, shown)
    ]
    ui.image_grid([ui.image(current, item_id) for item_id in ids], captions)


threshold_panel()

with st.expander("DBSCAN: a second detector"):
    st.caption(
        "Clusters train and test together (cosine distance); test images in clusters that contain no "
        "train image are flagged. Distractors from new classes tend to form their own clusters."
    )
    columns = st.columns(3)
    eps = columns[0].slider("eps (cosine distance)", 0.01, 1.0, 0.15, 0.01)
    min_samples = columns[1].number_input("min_samples", 1, 50, 3)
    noise = columns[2].checkbox("Count noise points as distractors")
    # Seconds at 13k items and minutes at 130k: computed only on request, once per dataset and settings.
    if st.toggle("Run DBSCAN", key="dbscan_run"):
        flags = state.dbscan_flags(
            current, DbscanConfig(eps=eps, min_samples=int(min_samples), noise_is_distractor=noise)
        )
        report = analysis.report(flags=flags)
        threshold_flags = analysis.flags(tab.shown)
        cells = st.columns(4)
        cells[0].metric("Flagged by DBSCAN", count_text(report.flagged))
        cells[1].metric("Agreement with the threshold", f"{(flags == threshold_flags).mean():.1%}")
        if (measured := report.measured) is not None:
            cells[2].metric(f"MAP@{report.k} with DBSCAN flags", f"{measured.map_at_k:.4f}")
            cells[3].metric("DBSCAN F1", f"{measured.detection.f1:.3f}")
    else:
        st.caption("Turn on **Run DBSCAN** to cluster with these settings.")
