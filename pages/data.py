"""Data page: choose or add a dataset, see its counts, gallery and refused files."""

import pandas as pd
import streamlit as st

from core.records import TEST, TRAIN
from core.session.datasets import data_root
from pages import ui

ws = ui.workspace()
st.title("Data")

datasets = ui.datasets(ws)
names = [entry.name for entry in datasets.all()]
with st.spinner("Writing the built-in dataset (the first time only)…"):
    current = datasets.active()
chosen = st.selectbox("Dataset", names, index=names.index(current.name))
if chosen != current.name:
    datasets.choose(chosen)
    st.rerun()

with st.expander("Add a dataset"):
    upload_tab, folder_tab = st.tabs(["Upload", "Folder on the server"])
    with upload_tab:
        st.caption(
            "A .zip of `train/<label>/…` and `test/…` (or `test/<label>/…`, `-1` for distractors), "
            "a `train.csv` (image,label) with its images, many images at once, or an embeddings `.parquet`."
        )
        files = st.file_uploader(
            "Files", accept_multiple_files=True, key="data_upload", type=["zip", "parquet", "csv", *ui.IMAGE_UPLOAD_TYPES]
        )
        name = st.text_input("Name", value="my dataset")
        if st.button("Add upload", disabled=not files):
            try:
                entry = datasets.add_upload(name, files)
            except (ValueError, OSError) as error:  # OSError: a full disk while saving the upload
                st.error(ui.plain(error))
            else:
                datasets.choose(entry.name)
                st.rerun()
    with folder_tab:
        root = data_root()
        st.caption(f"Folders under the data root `{root}` (set `RETRIEVAL_LAB_DATA_ROOT` to change it).")
        folder = st.text_input("Folder (relative to the data root)")
        if st.button("Open folder", disabled=not folder):
            try:
                entry = datasets.add_folder(folder)
            except (ValueError, OSError) as error:  # OSError: an unreadable folder
                st.error(ui.plain(error))
            else:
                datasets.choose(entry.name)
                st.rerun()

entry = datasets.active()
if entry.kind == "parquet":
    st.info("This dataset is a Parquet file of precomputed vectors: there are no images to show.")
    st.stop()

try:
    dataset = ui.read_dataset(entry.source)
except (ValueError, OSError) as error:
    st.error(f"**{ui.plain(entry.name)}** cannot be read: {ui.plain(error)}")
    st.stop()

train, test = dataset.split(TRAIN), dataset.split(TEST)
columns = st.columns(4)
columns[0].metric("Train images", len(train))
columns[1].metric("Train classes", len({item.label for item in train}))
columns[2].metric("Test images", len(test))
columns[3].metric("Files refused", len(datasets.refused_on_upload(entry)) + len(dataset.rejected))
st.caption(dataset.summary())
if dataset.has_test_truth:
    distractors = sum(item.label == "-1" for item in test)
    st.caption(f"Test truth is known: {distractors} of {len(test)} test images are distractors ({distractors / max(len(test), 1):.0%}).")

counts = pd.DataFrame(
    [(item.split, item.label if item.label is not None else "(unlabelled)") for item in dataset.items],
    columns=["split", "label"],
).value_counts().rename("images").reset_index()
with st.expander("Images per split and class"):
    st.dataframe(counts, hide_index=True, width="stretch")

refused = datasets.refused_on_upload(entry) + dataset.rejected
if refused:
    with st.expander(f"Refused files ({len(refused)})", expanded=True):
        st.dataframe(pd.DataFrame([(r.name, r.reason) for r in refused], columns=["file", "reason"]), hide_index=True, width="stretch")

st.subheader("Gallery")
split = st.radio("Split", [TRAIN, TEST], horizontal=True)
items = dataset.split(split)
per_page = 24
page = st.number_input("Page", 1, max(1, -(-len(items) // per_page)), 1)
shown = items[(page - 1) * per_page : page * per_page]
ui.image_grid([ui.thumbnail(str(item.path)) for item in shown], [f"{item.id} · {item.label or '?'}" for item in shown])
