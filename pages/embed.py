"""Embed page: choose the model, precision and batch size, and embed the active dataset with progress."""

import streamlit as st

from core.embed import BASELINE, PRECISIONS, EmbedConfig, list_models
from pages import ui

st.title("Embed")
ws = ui.workspace()
entry = ui.active_dataset(ws)
saved = ui.active_model(ws)
st.caption(f"Dataset: **{entry.name}**")

known = list_models()
other = "another Hugging Face id or local folder…"
options = [*known, other]
choice = st.selectbox(
    "Model",
    options,
    index=options.index(saved.model) if saved.model in known else len(options) - 1,
    format_func=lambda name: name if name == other else f"{name} — {known[name]}",
)
model = st.text_input("Hugging Face id or local checkpoint folder", value=saved.model if saved.model not in known else "") if choice == other else choice
columns = st.columns(2)
precision = columns[0].radio("Precision", PRECISIONS, index=PRECISIONS.index(saved.precision), horizontal=True, disabled=model == BASELINE)
batch_size = columns[1].number_input("Batch size", 1, 512, saved.batch_size)

if st.button("Embed", type="primary", disabled=not model):
    try:
        config = EmbedConfig(model=model.strip(), batch_size=int(batch_size), precision=precision)
    except ValueError as error:
        st.error(str(error))
        st.stop()
    ws.set("embed_config", {"model": config.model, "batch_size": config.batch_size, "precision": config.precision})

current = ui.session()
loaded = current.loaded
emb = loaded.embeddings
counts = ui.split_counts(current)
cells = st.columns(5)
cells[0].metric("Vectors", len(emb.ids))
cells[1].metric("Dimensions", emb.dim)
cells[2].metric("Computed", loaded.computed)
cells[3].metric("From cache", loaded.from_cache)
cells[4].metric("Refused", len(loaded.rejected))
st.caption(f"Model identity: `{emb.model}` · train {counts['train']}, test {counts['test']} · {loaded.seconds:.1f} s")
if loaded.computed and loaded.seconds:
    st.caption(f"{loaded.computed / loaded.seconds:.1f} images/s when computed.")
if loaded.rejected:
    with st.expander(f"Refused while embedding ({len(loaded.rejected)})"):
        st.dataframe([{"file": r.name, "reason": r.reason} for r in loaded.rejected], hide_index=True)
