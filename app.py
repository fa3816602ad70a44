"""Retrieval Lab dashboard: `streamlit run app.py` opens on the built-in demo, ready to use."""

import streamlit as st

from pages import state

# An emoji favicon is drawn by the browser; a Material one would be fetched from a font host.
st.set_page_config(page_title="Retrieval Lab", page_icon="🔎", layout="wide")

# Page icons are Material Symbols from the font Streamlit itself serves: no request leaves the app.
pages = [
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:", default=True),
    st.Page("pages/embed.py", title="Embed", icon=":material/memory:"),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("pages/distractors.py", title="Distractors", icon=":material/tune:"),
    st.Page("pages/neighbours.py", title="Neighbours", icon=":material/image_search:"),
    st.Page("pages/evaluate.py", title="Evaluate & export", icon=":material/leaderboard:"),
    st.Page("pages/audit.py", title="Audit", icon=":material/fact_check:"),
    st.Page("pages/text_image.py", title="Text ↔ image", icon=":material/translate:"),
]
navigation = st.navigation(pages)
state.open_requested_page(pages)

ws = state.workspace()
# Before the page, not after: a page that has nothing more to show calls st.stop(), which ends the run at the
# next Streamlit call wherever it comes, even in a `finally`. Neither waits (the model's load and a Parquet's
# analysis run in background threads), so the page still paints at once.
state.start_background_work(ws)
state.show_sidebar(ws)
navigation.run()
