"""Distractors page: the live threshold slider, its counts, curves and metrics, and DBSCAN."""

import numpy as np
import pandas as pd
import streamlit as st

from core.retrieval.distractors import DbscanConfig
from core.retrieval.validation import conformal_threshold
from core.retrieval.placement import PLACEMENTS
from core.maps.figures import contamination_curve, metric_curve, score_histogram
from pages import ui

st.title("Distractors")
current = ui.session()

analysis = current.analysis
sweep = analysis.sweep
low, high = float(np.floor(sweep.sorted_scores[0] * 100) / 100), float(np.ceil(sweep.sorted_scores[-1] * 100) / 100)
if high <= low:
    high = low + 0.01
threshold_state = f"threshold-{current.ws.id}-{current.entry.name}-{current.loaded.embeddings.model}"
synced_state = threshold_state + "-synced"  # the saved threshold this tab last read or wrote
previous_state = threshold_state + "-previous"  # the slider's position one run ago, for "what flips"


def on_slider_grid(value: float, rounding=round) -> float:
    """A threshold the slider can show exactly, so the slider, the metrics and the saved value agree.

    `rounding` is np.floor for a bound: a lower threshold flags no more items than the one asked for."""
    step = 10.0**ui.THRESHOLD_DECIMALS
    return float(np.clip(rounding(value * step) / step, low, high))


st.caption(
    f"A test image is flagged as a distractor when its best cosine similarity to any train image is below "
    f"the threshold. Default rule: {analysis.threshold_source} → {analysis.threshold:.3f}."
)
st.caption(
    f'Where "-1" goes: **{analysis.placement}** ({ui.plain(analysis.placement_source)}). "first" puts it first for '
    "flagged items only; \"optimal\" also puts it, for every other item, at the rank with the highest expected "
    f"AP@{analysis.config.k} (2–{analysis.config.k} or nowhere). Choose it on the **Evaluate & export** page."
)


def _save_slider_threshold() -> None:
    value = st.session_state[threshold_state]
    current.save_threshold(value)
    st.session_state[synced_state] = value


def _set_threshold_from_contamination() -> None:
    # The box only sets the slider and never follows it: two widgets writing each other's value race
    # when key presses arrive faster than reruns, and the slider snaps back.
    target = st.session_state[threshold_state + "-target"]
    st.session_state[threshold_state] = on_slider_grid(sweep.threshold_for(target))
    _save_slider_threshold()


def _set_threshold_from_false_flag() -> None:
    # Like the contamination box: it sets the slider and never follows it. Rounded down to the grid
    # so the threshold shown keeps the bound.
    alpha = st.session_state[threshold_state + "-alpha"]
    st.session_state[threshold_state] = on_slider_grid(conformal_threshold(analysis.evidence, alpha), np.floor)
    _save_slider_threshold()


@st.fragment
def threshold_panel() -> None:
    saved = on_slider_grid(current.threshold)
    changed_elsewhere = synced_state in st.session_state and saved != st.session_state[synced_state]
    if threshold_state not in st.session_state or changed_elsewhere:
        st.session_state[threshold_state] = saved
        st.session_state[synced_state] = saved
    if changed_elsewhere:
        st.info(f"The threshold was changed to {saved:.3f} in another tab of this workspace; the slider now shows it.")
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
        st.form_submit_button("Set threshold for α", on_click=_set_threshold_from_false_flag, disabled=analysis.evidence is None)
    with left:
        threshold = st.slider(
            "Distractor threshold", low, high, step=10.0**-ui.THRESHOLD_DECIMALS, format=f"%.{ui.THRESHOLD_DECIMALS}f", key=threshold_state,
            on_change=_save_slider_threshold,
        )
    previous = st.session_state.get(previous_state, threshold)
    st.session_state[previous_state] = threshold

    flagged = int(sweep.flagged_count(threshold))
    cells = st.columns(4)
    cells[0].metric("Flagged as distractors", flagged, delta=flagged - int(sweep.flagged_count(previous)) or None, delta_color="off")
    cells[1].metric("Kept", sweep.n - flagged)
    cells[2].metric("Contamination", f"{flagged / sweep.n:.1%}")
    cells[3].metric("Threshold", f"{threshold:.3f}")
    k = analysis.config.k
    if sweep.has_map:
        precision, recall, f1 = (float(v) for v in sweep.detection_at(threshold))
        cells = st.columns(4)
        cells[0].metric(f"MAP@{k}", f"{float(sweep.map_at(threshold)):.4f}")
        cells[1].metric("Precision", f"{precision:.3f}")
        cells[2].metric("Recall", f"{recall:.3f}")
        cells[3].metric("F1", f"{f1:.3f}")
        cells = st.columns(4)
        for cell, placement in zip(cells, PLACEMENTS):
            cell.metric(f'MAP@{k}, "-1" {placement}', f"{float(analysis.sweep_for(placement).map_at(threshold)):.4f}")
        false_flags = analysis.false_flag_share(threshold)
        cells[2].metric(
            "Known-class images flagged", "–" if false_flags is None else f"{false_flags:.1%}",
            help="The realised false-flag rate: the share of test images whose class is in train that this threshold flags.",
        )
    else:
        cells = st.columns(4)
        st.caption(f"No test truth: MAP@{k}, precision and recall need test images in test/<label>/ folders.")
    expected = analysis.expected_map(threshold)
    if expected is not None:
        cells[3].metric(
            f"Expected MAP@{k}", f"{expected:.4f}",
            help="What the placement model expects of this threshold and placement, without test truth.",
        )
    at_rank = np.bincount(analysis.positions(threshold), minlength=k + 1)
    st.dataframe(
        pd.DataFrame({"-1 at": [*map(str, range(1, k + 1)), "nowhere"], "test images": [*at_rank[1:], at_rank[0]]}),
        hide_index=True,
    )

    grid = sweep.grid()
    charts = st.columns(2)
    charts[0].plotly_chart(score_histogram(analysis.scores, analysis.train_loo_scores, threshold), width="stretch")
    charts[1].plotly_chart(
        contamination_curve(grid, sweep.contamination(grid), threshold, flagged / sweep.n), width="stretch"
    )
    if sweep.has_map:
        best_threshold, best_map = sweep.best_map_threshold()
        st.plotly_chart(
            metric_curve(grid, sweep.map_at(grid), threshold, f"MAP@{k}", best=(best_threshold, best_map)), width="stretch"
        )
        st.caption(
            f"With the test truth, the best threshold is {best_threshold:.3f} (MAP@{k} {best_map:.4f}): the middle "
            "of the widest range of thresholds that reach it, the choice least sensitive to noise in the scores."
        )

    between = (analysis.scores >= min(previous, threshold)) & (analysis.scores < max(previous, threshold))
    flipped = np.flatnonzero(between)
    st.subheader(f"What flips ({len(flipped)})")
    if len(flipped) == 0:
        st.caption("Move the slider: the images whose verdict changes appear here.")
        return
    now_flagged = threshold > previous
    shown = flipped[np.argsort(analysis.scores[flipped])][:16]
    st.caption(
        f"{'Newly flagged' if now_flagged else 'No longer flagged'} between {previous:.3f} and {threshold:.3f}"
        + (f"; showing the {len(shown)} lowest-scoring of {len(flipped)}." if len(shown) < len(flipped) else ".")
    )
    ids = [str(analysis.test.ids[row]) for row in shown]
    captions = [
        f"{item_id} · {analysis.scores[row]:.3f}" + ("" if analysis.truth is None else f" · truth {analysis.truth[row]}")
        for item_id, row in zip(ids, shown)
    ]
    ui.image_grid([current.image(item_id) for item_id in ids], captions)


threshold_panel()

with st.expander("DBSCAN: a second detector"):
    st.caption(
        "Clusters train and test together (cosine distance); test images in clusters that contain no "
        "train image are flagged. Distractors from new classes tend to form their own clusters (seed 001)."
    )
    columns = st.columns(3)
    eps = columns[0].slider("eps (cosine distance)", 0.01, 1.0, 0.15, 0.01)
    min_samples = columns[1].number_input("min_samples", 1, 50, 3)
    noise = columns[2].checkbox("Count noise points as distractors")
    # Seconds at 13k items and minutes at 130k: computed only on request, once per dataset and settings.
    if st.toggle("Run DBSCAN", key="dbscan_run"):
        flags = ui.dbscan_flags(current, DbscanConfig(eps=eps, min_samples=int(min_samples), noise_is_distractor=noise))
        report = analysis.report(flags=flags)
        threshold_flags = analysis.flags(st.session_state[threshold_state])
        cells = st.columns(4)
        cells[0].metric("Flagged by DBSCAN", report["flagged"])
        cells[1].metric("Agreement with the threshold", f"{(flags == threshold_flags).mean():.1%}")
        if "MAP@5" in report:
            cells[2].metric("MAP@5 with DBSCAN flags", f"{report['MAP@5']:.4f}")
            cells[3].metric("DBSCAN F1", f"{report['distractor_f1']:.3f}")
    else:
        st.caption("Turn on **Run DBSCAN** to cluster with these settings.")
