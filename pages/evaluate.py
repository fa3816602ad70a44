"""Evaluate & export page: scores at the current threshold, a comparison of methods, and the downloads."""

import json
from dataclasses import replace

import pandas as pd
import streamlit as st

from core.analysis.threshold_steps import on_grid
from core.detection.distractors import SCORE_MODES
from core.display import count_text
from core.exports import EXPORT_FORMATS, FORMAT_NAMES, OPENING, exported_zip
from core.exports.items import export_items
from core.io.layouts import missing_test_truth
from core.maps.projection import METHOD_NAMES, PROJECTION_METHODS, ProjectionConfig
from core.methods.compare import (
    BASELINE_METHOD,
    COMPARE_METHODS,
    REGRESSION,
    as_json,
    compare_methods,
    format_table,
)
from core.paths import safe_file_name
from core.prediction.placement import MAX_K, PLACEMENTS
from core.prediction.predict import first_label_counts, submission_csv
from core.records import DISTRACTOR, TEST
from core.report.config import ReportConfig
from core.report.html import report_html
from core.session.vectors import export_embeddings, predict_config, save_predict_config
from pages import state, ui

TABLE_HEIGHT = 280  # about eight rows: the classes predicted most, then scroll
SCORE_MODE_NAMES = {"max": "best similarity", "mean": "mean of the nearest"}
PLACEMENT_CHOICES = (None, *PLACEMENTS)
PLACEMENT_NAMES = {
    None: "the better on train",
    "first": "first, flagged only",
    "optimal": "optimal",
}

st.title("Evaluate & export")
ws = state.workspace()
saved = predict_config(ws)
with st.expander(
    "Prediction settings: labels per row, the distractor score and where -1 goes (every page follows them)"
):
    k_column, mode_column, score_k_column, placement_column = st.columns(4)
    chosen_k = k_column.number_input(
        "Labels per prediction (k, MAP@k)",
        min_value=1,
        max_value=MAX_K,
        value=saved.k,
        key="evaluate_k",
        help=f"At most {MAX_K}: each test image keeps k labels and k neighbours.",
    )
    chosen_mode = mode_column.radio(
        "Distractor score",
        SCORE_MODES,
        index=SCORE_MODES.index(saved.score_mode),
        format_func=SCORE_MODE_NAMES.get,
        horizontal=True,
        key="evaluate_score_mode",
    )
    chosen_score_k = score_k_column.number_input(
        "Neighbours averaged",
        min_value=1,
        value=saved.score_k,
        disabled=chosen_mode != "mean",
        key="evaluate_score_k",
    )
    chosen_placement = placement_column.radio(
        'Where "-1" goes',
        PLACEMENT_CHOICES,
        index=PLACEMENT_CHOICES.index(saved.placement),
        format_func=PLACEMENT_NAMES.get,
        key="evaluate_placement",
        help='"first": first for flagged items only. "optimal": also, for every other item, at the rank with the highest '
        "expected AP@k. By default, whichever scores the higher validation MAP@k on train.",
    )
    wanted = replace(
        saved,
        k=int(chosen_k),
        score_mode=chosen_mode,
        score_k=int(chosen_score_k),
        placement=chosen_placement,
    )
    if wanted != saved:
        save_predict_config(ws, wanted)
        st.rerun()

current = state.active_analysis()
analysis, threshold = current.analysis, current.threshold
k = analysis.config.k
report = analysis.report(threshold)
predictions = analysis.predictions(threshold)

st.caption(
    f"Everything below uses the threshold **{threshold:.3f}** (set it on the **Distractors** page): "
    f"{count_text(report.flagged)} of {count_text(report.test_items)} test images ({report.flagged_share:.0%}) are flagged "
    f'as distractors and get "{DISTRACTOR}" first. Placement: **{analysis.placement}** ({ui.plain(analysis.placement_source)}).'
)


def shown(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if (measured := report.measured) is None:
    embeddings = current.loaded.embeddings
    how = missing_test_truth(current.entry.source, embeddings.labels[embeddings.mask(TEST)])
    st.info(
        f"MAP@{k}, mP@{k}, top-1 accuracy and distractor detection need test truth: {ui.plain(how)}. "
        "The counts and the submission below work without."
    )
else:
    scores = st.columns(3)
    scores[0].metric(
        f"MAP@{k}",
        shown(measured.map_at_k),
        help="Kaggle's score: 1/rank of the true label in the first k, averaged.",
    )
    scores[1].metric(
        f"mP@{k}",
        shown(measured.mean_precision),
        help="Share of the first k neighbours with the query's class, over non-distractors.",
    )
    scores[2].metric(
        "Top-1 accuracy",
        shown(measured.top1_accuracy),
        help="Share of test images whose first label is right.",
    )
    detection = st.columns(4)
    detection[0].metric("Distractor precision", shown(measured.detection.precision))
    detection[1].metric("Distractor recall", shown(measured.detection.recall))
    detection[2].metric("Distractor F1", shown(measured.detection.f1))
    detection[3].metric(
        "Score ROC-AUC",
        shown(measured.detection.roc_auc),
        help="How well the score alone ranks distractors below the rest.",
    )
counts = st.columns(3)
counts[0].metric("Test images", count_text(report.test_items))
counts[1].metric("Flagged as distractors", count_text(report.flagged))
counts[2].metric("Flagged share", f"{report.flagged_share:.1%}")

st.subheader("Predicted classes")
first_labels = [row[0] for row in predictions]
distractors_first = first_labels.count(DISTRACTOR)
st.caption(
    f'"{DISTRACTOR}" first: {count_text(distractors_first)} of {count_text(len(first_labels))} test images '
    f"({distractors_first / len(first_labels):.1%}), left out of the table so the classes stay comparable."
)
# A table rather than a chart: the browser already has the table's code from the Data page, where a
# first chart makes it fetch and compile Plotly's (4.7 MB) before the page settles.
class_counts = first_label_counts(predictions)
st.dataframe(
    class_counts,
    hide_index=True,
    width="stretch",
    height=TABLE_HEIGHT,
    column_config={
        "test images": st.column_config.ProgressColumn(
            "test images predicted first",
            format="%d",
            min_value=0,
            max_value=int(class_counts["test images"].max()) if len(class_counts) else 1,
        )
    },
)
# Built only when asked for, a page of rows at a time: sending all 13k rows to the browser on every run
# kept the page busy seconds after its figures were shown.
if st.toggle("Predictions per test image", key="evaluate_table"):
    rows = ui.table_page(len(predictions), key="evaluate_table_page")
    table = pd.DataFrame(
        {
            "id": analysis.test.ids[rows],
            "predictions": [" ".join(row) for row in predictions[rows]],
            "score": analysis.scores[rows],
            "flagged": analysis.flags(threshold)[rows],
        }
    )
    if analysis.truth is not None:
        table["true class"] = analysis.truth[rows]
    st.dataframe(table, hide_index=True, width="stretch")

st.subheader("Downloads")
downloads = st.columns(3)
downloads[0].download_button(
    "Submission CSV",
    data=lambda: submission_csv(list(analysis.test.ids), predictions),
    file_name="submission.csv",
    mime="text/csv",
    on_click="ignore",
    help="id,predictions — the labels space-separated, as Kaggle expects.",
)
downloads[1].download_button(
    "Embeddings (Parquet)",
    data=lambda: export_embeddings(
        current.ws, current.entry.name, current.loaded.embeddings
    ).read_bytes(),
    file_name=f"{safe_file_name(current.entry.name, 'dataset')}-embeddings.parquet",
    mime="application/vnd.apache.parquet",
    on_click="ignore",
    help="id, split, label, embedding: open it again on the Data page or with `python -m core`.",
)
downloads[2].download_button(
    "Scores (JSON)",
    data=json.dumps(report.as_dict(), indent=2),
    file_name="report.json",
    mime="application/json",
    on_click="ignore",
)

st.subheader("Share")
st.caption(
    "One HTML file with these numbers, the threshold curves, the map, the data audit and test images beside "
    "their top-5 train neighbours: it opens in any browser, offline, without this server."
)
share_map, share_ready = st.columns([1, 2])
share_method = (
    share_map.segmented_control(
        "Map in the report",
        PROJECTION_METHODS,
        default=ReportConfig().map_method,
        format_func=METHOD_NAMES.get,
        key="evaluate_share_map",
    )
    or ReportConfig().map_method
)
images = ui.image_paths(current.entry)
rule = None if threshold == on_grid(analysis.threshold) else "set on the Distractors page"
if share_ready.toggle(
    "Prepare the report",
    key="evaluate_share",
    help="Computes the map and the data audit first if the Map and Audit pages have not.",
):
    projection = state.projection(current, ProjectionConfig(method=share_method))
    audit = state.audit(current)
    share_ready.download_button(
        "Share (HTML report)",
        data=lambda: report_html(
            current.loaded,
            analysis,
            projection,
            name=current.entry.name,
            images=images,
            threshold=threshold,
            threshold_rule=rule,
            audit=audit,
        ),
        file_name=f"{safe_file_name(current.entry.name, 'dataset')}-report.html",
        mime="text/html",
        on_click="ignore",
    )

st.subheader("Open in other tools")
st.caption(
    "Every train and test image with its split, label, predictions, distractor flag and score, its audit "
    "findings and its vector, "
    "in the tool's own format, as a zip: FiftyOne, Embedding Atlas (with the map and nearest train images) "
    "or TensorBoard's projector (with a sprite of thumbnails)."
)
# The tools' names take the page's width, as a third of it cuts "TensorBoard projector" off; what the chosen
# tool needs goes under them.
tool = (
    st.segmented_control(
        "Tool",
        EXPORT_FORMATS,
        default=EXPORT_FORMATS[1],
        format_func=FORMAT_NAMES.get,
        key="evaluate_export_format",
    )
    or EXPORT_FORMATS[1]
)
tool_ready = st.container()
if tool == "fiftyone" and not images:
    tool_ready.info(
        "FiftyOne shows image files and this dataset is vectors only: choose Embedding Atlas or TensorBoard."
    )
elif tool_ready.toggle(
    "Prepare the export",
    key="evaluate_export",
    help="Embedding Atlas needs the map: computed first if the Map page has not.",
):
    options = (
        {"projection": state.projection(current, ProjectionConfig())} if tool == "atlas" else {}
    )
    audit = state.audit(current)
    tool_ready.download_button(
        f"{FORMAT_NAMES[tool]} (zip)",
        data=lambda: exported_zip(
            tool,
            export_items(analysis, images, threshold, rule=rule, audit=audit),
            current.entry.name,
            **options,
        ),
        file_name=f"{safe_file_name(current.entry.name, 'dataset')}-{tool}.zip",
        mime="application/zip",
        on_click="ignore",
        help=OPENING[tool],
    )

st.subheader("Compare methods")
st.caption(
    "Plain cosine kNN against heads trained on the frozen embeddings, on one split with the same "
    "distractors. Each method flags the contamination share of its queries by its own scores. "
    "Training takes seconds to minutes."
)
offered = [key for key in COMPARE_METHODS if key != REGRESSION]
methods = st.multiselect(
    "Methods", offered, default=offered, format_func=COMPARE_METHODS.get, key="evaluate_methods"
)
# Kept per session so downloads and other widgets do not throw away minutes of training.
comparisons = st.session_state.setdefault("evaluate_comparisons", {})
comparison_key = (
    current.entry.source,
    current.loaded.embeddings.model,
    analysis.config,
    tuple(methods),
)
if st.button("Compare methods", type="primary", disabled=not methods):
    with st.status("Comparing methods…", expanded=True) as status:
        try:
            comparison = compare_methods(
                current.loaded.embeddings,
                analysis.config,
                methods=methods,
                progress=lambda method: status.update(label=f"Training and scoring: {method}…"),
            )
        except ValueError as error:
            status.update(label="The methods cannot be compared", state="error")
            st.error(ui.plain(error))
            st.stop()
        status.update(label="Comparison ready", state="complete", expanded=False)
    comparisons[comparison_key] = comparison
comparison = comparisons.get(comparison_key)
if comparison is None:
    st.caption(
        f"{COMPARE_METHODS[BASELINE_METHOD]} is always included. kNN regression needs a target vector per image and is run from code."
    )
    st.stop()
result = as_json(comparison)
st.caption(f"Evaluated on {comparison.evaluated_on}.")
score = st.column_config.NumberColumn(format="%.3f")
st.dataframe(
    pd.DataFrame(result["methods"]).drop(columns="key"),
    hide_index=True,
    width="stretch",
    column_config={
        f"MAP@{k}": score,
        f"mP@{k}": score,
        "top1": st.column_config.NumberColumn("top-1", format="%.3f"),
        "distractor_f1": st.column_config.NumberColumn("distractor F1", format="%.3f"),
        "fit_seconds": st.column_config.NumberColumn("fit s", format="%.2f"),
    },
)
for verdict in comparison.verdicts:
    st.markdown(f"- {verdict}")
for note in comparison.notes:
    st.caption(note)
exports = st.columns(2)
exports[0].download_button(
    "Comparison (text)", format_table(comparison), "comparison.txt", "text/plain", on_click="ignore"
)
exports[1].download_button(
    "Comparison (JSON)",
    json.dumps(result, indent=2),
    "comparison.json",
    "application/json",
    on_click="ignore",
)
