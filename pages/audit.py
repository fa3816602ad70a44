"""Audit page: the data behind the score — train↔test near-duplicates, suspected mislabels, duplicate groups, look-alike classes."""

import pandas as pd
import streamlit as st

from core.audit.effects import cleaned_train_csv, leakage, relabel_csv
from core.audit.findings import (
    CUT_SCOPES,
    DUPLICATE,
    KIND_NAMES,
    KINDS,
    MISLABEL,
    NEAR_DUPLICATE,
    findings_csv,
)
from core.display import count_text
from pages import state, ui

PAIRS_SHOWN = 8  # image pairs drawn for the chosen kind, surest first

st.title("Audit")
current = state.active_analysis()
analysis = current.analysis
found = state.audit(current)
k = analysis.config.k

st.caption(
    "Before trusting a score: test images that copy a train image (leakage), train images whose label their "
    "neighbours disagree with, duplicates inside a split and train classes that look like one. Nothing in the "
    "data is changed: download a cleaned train list or a relabel list below."
)
default_cut = found.cuts[NEAR_DUPLICATE].value
cut = st.slider(
    "Near-duplicate cut (cosine similarity)",
    min_value=0.8,
    max_value=1.0,
    value=max(0.8, round(default_cut, 3)),
    step=0.001,
    format="%.3f",
    key="audit_cut",
    help="Pairs at or above it are near-duplicates. Left at the value chosen from the data, each scope keeps its own cut.",
)
chosen = None if cut == max(0.8, round(default_cut, 3)) else cut
with st.expander("How the cuts were chosen"):
    for scope, scope_cut in found.cuts.items():
        st.markdown(f"- **{ui.plain(CUT_SCOPES[scope])}**: {ui.plain(scope_cut.source)}")
for note in found.notes:
    st.caption(f"Note: {ui.plain(note)}")

findings = found.findings(chosen)
counts = found.counts(chosen)
for column, kind in zip(st.columns(len(KINDS)), KINDS):
    column.metric(KIND_NAMES[kind], count_text(counts[kind]))

leaked = leakage(found, chosen)
if leaked.same_label is not None and leaked.pairs:
    without = leaked.map_without_duplicates
    st.markdown(
        f"**Leakage:** {count_text(leaked.same_label)} of {count_text(leaked.pairs)} near-duplicates carry their test image's true label. "
        f"MAP@{k} {leaked.map_as_analysed:.4f} as analysed, {leaked.map_taking_duplicate_label:.4f} when each "
        f"takes its duplicate's label, "
        + ("n/a" if without is None else f"{without:.4f}")
        + " over the other test images."
    )

kind = st.segmented_control(
    "Findings", KINDS, default=NEAR_DUPLICATE, format_func=KIND_NAMES.get, key="audit_kind"
)
shown = [finding for finding in findings if finding.kind == (kind or NEAR_DUPLICATE)]
table = pd.DataFrame([finding.row() for finding in shown], columns=list(shown and shown[0].row()))
if shown:
    table["score"] = table["score"].astype(float)
    st.dataframe(table, hide_index=True, width="stretch")
    images, captions = [], []
    for finding in shown[:PAIRS_SHOWN]:
        other = finding.other_id
        if finding.kind == MISLABEL:
            other = found.nearest_train_image(finding.id) or finding.id
        images += [ui.image(current, finding.id), ui.image(current, other)]
        second = (
            f"nearest: {other} · suggested {finding.suggested_label}"
            if finding.kind == MISLABEL
            else f"{other} · {finding.other_label}"
        )
        captions += [f"{finding.id} · {finding.label} · {finding.score:.4f}", second]
    ui.image_grid(images, captions, per_row=4)
else:
    st.info(f"No {KIND_NAMES[kind or NEAR_DUPLICATE]} at this cut.")

st.subheader("What changes if I drop or relabel them")
mislabels = found.mislabels
near_train = sorted({f.other_id for f in findings if f.kind == NEAR_DUPLICATE})
duplicated_train = sorted(
    {f.other_id for f in findings if f.kind == DUPLICATE and f.split == "train"}
)
action = st.radio(
    "Change",
    (
        "Drop the suspected mislabels",
        "Relabel the suspected mislabels with their suggested label",
        "Drop the train images copied into test",
        "Drop the second image of each train duplicate pair",
    ),
    key="audit_action",
)
drop, relabel = [], {}
if action.startswith("Drop the suspected"):
    drop = [finding.id for finding in mislabels]
elif action.startswith("Relabel"):
    relabel = {finding.id: finding.suggested_label for finding in mislabels}
elif action.startswith("Drop the train images copied"):
    drop = near_train
else:
    drop = duplicated_train
if not (drop or relabel):
    st.info("Nothing to change: no train image is named by these findings.")
elif st.button("Measure the change", key="audit_measure"):
    try:
        change = state.finished(
            lambda again: state.server().what_if_job(current, drop, relabel, again),
            f"Analysing {current.entry.name} with {count_text(len(drop))} train images dropped and {count_text(len(relabel))} relabelled",
        )
    except ValueError as error:
        st.error(f"The change cannot be measured: {ui.plain(error)}")
        st.stop()
    before, after = change.before, change.after
    columns = st.columns(3)
    columns[0].metric("flagged", count_text(after.flagged), f"{after.flagged - before.flagged:+,}")
    for column, name, was, now, why in (
        (columns[1], f"MAP@{after.k}", before.measured_map, after.measured_map, "needs test truth"),
        (columns[2], f"expected MAP@{after.k}", before.expected_map, after.expected_map, None),
    ):
        if was is None or now is None:
            column.metric(name, "n/a", help=why)
        else:
            column.metric(name, f"{now:.4f}", f"{now - was:+.4f}")

try:
    cleaned = cleaned_train_csv(analysis, drop, relabel)
except ValueError as error:
    cleaned = None
    st.caption(f"No cleaned train list: {ui.plain(error)}")
left, middle, right = st.columns(3)
left.download_button(
    "findings.csv",
    findings_csv(findings),
    "findings.csv",
    "text/csv",
    key="audit_findings_csv",
)
middle.download_button(
    "Cleaned train list (CSV)",
    cleaned or "",
    "train_cleaned.csv",
    "text/csv",
    key="audit_cleaned_csv",
    disabled=cleaned is None,
    help="id,label of the train images kept, with the change above applied",
)
right.download_button(
    "Relabel list (CSV)", relabel_csv(mislabels), "relabel.csv", "text/csv", key="audit_relabel_csv"
)
