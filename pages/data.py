"""Data page: choose or add a dataset, see its counts, gallery and refused files."""

from dataclasses import fields

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.display import count_text
from core.io.hf_datasets import HfSelection
from core.io.parquet import read_embeddings_checked
from core.io.parts import incomplete_note
from core.paths import data_root, without_server_paths
from core.progress import Watch
from core.records import TEST, TRAIN
from core.session.datasets import WorkspaceDatasets, open_action
from pages import state, ui

# Session state: how many uploads this session stored, part of the uploader's key.
UPLOADS_STORED = "data_uploads_stored"


def add_upload(datasets: WorkspaceDatasets) -> None:
    """The uploader, the name and the button that stores an upload as a dataset.

    Streamlit keeps each uploaded file's bytes for the session and hands every run a deep copy of
    them, so the files stay local to this function: a page global would live on in the page's
    reference cycles, which only a full garbage collection frees, and postScriptGC is off
    (.streamlit/config.toml). Once stored, the files are let go: they leave Streamlit's upload
    store (as when the user removes them from the uploader) and a new key empties the uploader.
    """
    stored_so_far = st.session_state.setdefault(UPLOADS_STORED, 0)
    files = st.file_uploader(
        "Files",
        accept_multiple_files=True,
        key=f"data_upload_{stored_so_far}",
        type=["zip", "parquet", "csv", *ui.IMAGE_UPLOAD_TYPES],
    )
    name = st.text_input("Name", value="my dataset")
    if not st.button("Add upload", disabled=not files):
        return
    try:
        entry = datasets.add_upload(name, files)
    except (ValueError, OSError) as error:  # OSError: a full disk while saving the upload
        st.error(ui.plain(error))
        return
    context = get_script_run_ctx()
    for upload in files:
        context.uploaded_file_mgr.remove_file(context.session_id, upload.file_id)
    st.session_state[UPLOADS_STORED] = stored_so_far + 1
    datasets.choose(entry.name)
    st.rerun()


ws = state.workspace()
st.title("Data")

datasets = state.server().datasets(ws)
names = [entry.name for entry in datasets.all()]
with st.spinner("Writing the built-in dataset (the first time only)…"):
    current = datasets.active()
chosen = st.selectbox("Dataset", names, index=names.index(current.name))
if chosen != current.name:
    datasets.choose(chosen)
    st.rerun()

with st.expander("Add a dataset"):
    upload_tab, folder_tab, hugging_face_tab = st.tabs(
        ["Upload", "Folder on the server", "Hugging Face"]
    )
    with upload_tab:
        st.caption(
            "A .zip of `train/<label>/…` and `test/…` (or `test/<label>/…`, `-1` for distractors), "
            "a `train.csv` (image,label) with its images, many images at once, or an embeddings `.parquet`."
        )
        add_upload(datasets)
    with folder_tab:
        root = data_root()
        st.caption(
            f"A dataset folder, an embeddings `.parquet` or a folder of its part files under the data root "
            f"`{root}` (set `RETRIEVAL_LAB_DATA_ROOT` to change it)."
        )
        folder = st.text_input("Folder or .parquet (relative to the data root)")
        if st.button(open_action(folder), disabled=not folder, key="data_open_folder"):
            try:
                entry = datasets.add_folder(folder)
            except (ValueError, OSError) as error:  # OSError: an unreadable folder
                st.error(ui.plain(error))
            else:
                datasets.choose(entry.name)
                st.rerun()
    with hugging_face_tab:
        st.caption(
            "A folder written by `save_to_disk` under the data root, or `hf:owner/name` for a dataset on the "
            "Hugging Face Hub (needs network). Its images are written once, then reused."
        )
        location = st.text_input("save_to_disk folder or hf:owner/name", key="hf_location")
        columns = st.columns(4)
        selection = HfSelection(
            **{
                field.name: column.text_input(
                    field.name.replace("_", " ").capitalize(),
                    field.default,
                    help=field.metadata["help"],
                    key=f"hf_{field.name}",
                )
                for field, column in zip(fields(HfSelection), columns)
            }
        )
        if st.button("Add Hugging Face dataset", disabled=not location):
            bar = st.progress(0.0)
            watch = Watch(
                report=lambda done, total, stage: bar.progress(
                    done / total if total else 1.0, text=ui.plain(stage)
                )
            )
            try:
                entry = datasets.add_hugging_face(location, selection, watch)
            except (ValueError, OSError) as error:  # OSError: an unreadable folder or a full disk
                st.error(ui.plain(error))
            else:
                datasets.choose(entry.name)
                st.rerun()


def show_counts(
    pairs: list[tuple[str, str | None]], refused: list, unit: str, refused_unit: str
) -> None:
    """Counts per split and class from (split, label) pairs, and what was refused with its reason."""
    train_labels = [label for split, label in pairs if split == TRAIN]
    test_labels = [label for split, label in pairs if split == TEST]
    columns = st.columns(4)
    columns[0].metric(f"Train {unit}", count_text(len(train_labels)))
    columns[1].metric("Train classes", count_text(len(set(train_labels))))
    columns[2].metric(f"Test {unit}", count_text(len(test_labels)))
    columns[3].metric(f"{refused_unit.capitalize()} refused", count_text(len(refused)))
    st.caption(f"{count_text(len(pairs))} accepted, {count_text(len(refused))} refused")
    if test_labels and None not in test_labels:
        distractors = test_labels.count("-1")
        st.caption(
            f"Test truth is known: {count_text(distractors)} of {count_text(len(test_labels))} test {unit} are distractors ({distractors / len(test_labels):.0%})."
        )
    counts = (
        pd.DataFrame(
            [(split, label if label is not None else "(unlabelled)") for split, label in pairs],
            columns=["split", "label"],
        )
        .value_counts()
        .rename(unit)
        .reset_index()
    )
    with st.expander(f"{unit.capitalize()} per split and class"):
        st.dataframe(counts, hide_index=True, width="stretch")
    if refused:
        with st.expander(f"Refused {refused_unit} ({count_text(len(refused))})", expanded=True):
            st.dataframe(
                pd.DataFrame(
                    [(r.name, r.reason) for r in refused], columns=[refused_unit[:-1], "reason"]
                ),
                hide_index=True,
                width="stretch",
            )


entry = datasets.active()
if entry.kind == "parquet":
    try:
        vectors, dropped = read_embeddings_checked(entry.source)
    except ValueError as error:
        st.error(
            f"**{ui.plain(entry.name)}** cannot be read: {ui.plain(without_server_paths(error))}"
        )
        st.stop()
    st.caption(
        f"Vectors made by {ui.plain(vectors.model)}, {vectors.dim} dimensions: the analysis pages use them as they are."
    )
    if note := incomplete_note(entry.source):
        st.warning(ui.plain(note))
    show_counts(
        list(zip(vectors.splits.tolist(), vectors.labels.tolist())), dropped, "rows", "rows"
    )
    st.info("This dataset is a Parquet file of precomputed vectors: there are no images to show.")
    st.stop()

try:
    dataset = ui.read_dataset(entry.source)
except (ValueError, OSError) as error:
    st.error(f"**{ui.plain(entry.name)}** cannot be read: {ui.plain(without_server_paths(error))}")
    st.stop()

show_counts(
    [(item.split, item.label) for item in dataset.items],
    datasets.refused_on_upload(entry) + dataset.rejected,
    "images",
    "files",
)

st.subheader("Gallery")
split = st.radio("Split", [TRAIN, TEST], horizontal=True)
items = dataset.split(split)
per_page = 24
page = st.number_input("Page", 1, max(1, -(-len(items) // per_page)), 1)
shown = items[(page - 1) * per_page : page * per_page]
ui.image_grid(
    [ui.thumbnail(str(item.path)) for item in shown],
    [f"{item.id} · {item.label or '?'}" for item in shown],
)
