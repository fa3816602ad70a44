"""Retrieval Lab dashboard: `streamlit run app.py` opens on the built-in demo, ready to use."""

import threading

import streamlit as st

from core.maps.projection import warm_up
from pages import ui

st.set_page_config(page_title="Retrieval Lab", page_icon=":material/image_search:", layout="wide")


@st.cache_resource(show_spinner=False)
def _start_projection_warm_up() -> threading.Thread:
    # numba compiles UMAP on first use; paying that in the background keeps it off the first click.
    thread = threading.Thread(target=warm_up, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


_start_projection_warm_up()

navigation = st.navigation(
    [
        st.Page("pages/data.py", title="Data", icon=":material/folder_open:", default=True),
        st.Page("pages/embed.py", title="Embed", icon=":material/memory:"),
        st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("pages/distractors.py", title="Distractors", icon=":material/tune:"),
        st.Page("pages/neighbours.py", title="Neighbours", icon=":material/image_search:"),
        st.Page("pages/evaluate.py", title="Evaluate & export", icon=":material/leaderboard:"),
        st.Page("pages/text_image.py", title="Text ↔ image", icon=":material/translate:"),
    ]
)

ws = ui.workspace()
with st.sidebar:
    st.caption(f"Dataset: **{ui.plain(ui.active_dataset(ws).name)}**")
    model_in_use, _, unavailable = ui.model_for(ui.active_model(ws))
    st.caption(f"Model: **{model_in_use.model}**" + (" (CLIP unavailable)" if unavailable else ""))
    st.caption(f"Workspace `{ws.id}` — bookmark this page's address to come back to it.")

navigation.run()
