"""Streamlit glue for what a page needs from the server: the one Server, this tab's workspace from the address,
the sidebar and background work, waiting on a job with progress and Cancel, and the active analysis."""

# Only light modules are imported here: the Data page and the sidebar must paint before torch,
# scikit-learn, FAISS or UMAP load. What the analysis pages need is imported where it is used.

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import streamlit as st

from core.display import count_text
from core.embedding.config import EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.session.jobs import CANCELLED, FAILED, Job
from core.session.models import HOW_TO_GET_CLIP, chosen_model
from core.session.server import ActiveAnalysis, Server
from core.session.workspace import DatasetEntry, Workspace
from pages.ui import plain

if TYPE_CHECKING:
    from core.analysis.loading import LoadedEmbeddings

APP_RAN = "app-ran"  # session state: app.py has run in this session, so its navigation is in charge
OPEN_PAGE = "open"  # query parameter: the page a deep link asked for, carried through app.py
POLL_SECONDS = 0.25  # how often a page waiting for a background job redraws its progress
BAR_STEP = 0.1  # the share of a stage the progress bar moves by


@st.cache_resource(show_spinner=False)
def server() -> Server:
    """What the whole server shares: models, the embedding cache, loaded vectors and background jobs."""
    return Server()


# ── the workspace in the address, the sidebar and the background work ──────


def open_requested_page(pages: list) -> None:
    """Run in app.py after st.navigation: mark the session, and open the page a deep link asked for."""
    st.session_state[APP_RAN] = True
    requested = st.query_params.get(OPEN_PAGE)
    if requested is None:
        return
    del st.query_params[OPEN_PAGE]
    for page in pages:
        if page.url_path == requested:
            st.switch_page(page, query_params=st.query_params.to_dict())


def workspace() -> Workspace:
    """This browser tab's workspace: its id lives in the URL, so a reload or restart finds it again."""
    if not st.session_state.get(APP_RAN):
        # A bookmarked page opened first on a fresh server runs alone, in Streamlit's legacy
        # pages-folder mode (there is a pages/ folder beside app.py): go through app.py, whose
        # st.navigation ends that mode for the server, and have it open this page again.
        this_page = urlparse(st.context.url or "").path.rstrip("/").rsplit("/", 1)[-1]
        st.switch_page("app.py", query_params={**st.query_params.to_dict(), OPEN_PAGE: this_page})
    workspace_id = st.query_params.get("ws")
    if "workspace" in st.session_state and workspace_id in (None, st.session_state.workspace.id):
        # Switching pages drops the query string; put the id back so the address stays a bookmark.
        st.query_params["ws"] = st.session_state.workspace.id
        return st.session_state.workspace
    try:
        current = Workspace(workspace_id) if workspace_id else None
    except ValueError as error:
        st.warning(f"{plain(error)}. A new workspace was opened.")
        current = None
    if current is None:
        current = Workspace(Workspace.new_id())
        st.query_params["ws"] = current.id
    st.session_state.workspace = current
    return current


def start_background_work(ws: Workspace) -> None:
    """Server.start_background_work, once this script run has ended: the page paints first, and nothing the page
    does to end its run (st.stop()) keeps the work from starting."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    # Streamlit's script thread ends once its session has no rerun queued.
    script = threading.current_thread() if get_script_run_ctx(suppress_warning=True) else None
    server().start_background_work(ws, after=script.join if script else lambda: None)


def show_sidebar(ws: Workspace) -> None:
    """The dataset, model and workspace lines; none waits: the dataset is named, not opened, and the model's load
    is reported, not awaited."""
    with st.sidebar:
        st.caption(f"Dataset: **{plain(server().datasets(ws).chosen().name)}**")
        st.caption(f"Model: **{plain(server().model_status(ws))}**")
        st.caption(f"Workspace {plain(ws.id)} — bookmark this page's address to come back to it.")


# ── vectors, the analysis and other background work ─────────────────────────


def _progress_bar(entry: DatasetEntry, area):
    def progress(done: int, total: int, images_per_second: float) -> None:
        remaining = (total - done) / images_per_second if images_per_second else 0.0
        text = f"{count_text(done)}/{count_text(total)} images of {plain(entry.name)} · {images_per_second:.1f} images/s · ETA {remaining:.0f} s"
        area.progress(done / total if total else 1.0, text=text)

    return progress


def embeddings(entry: DatasetEntry, config: EmbedConfig, progress_area=None) -> LoadedEmbeddings:
    """Vectors of a dataset by one model; the first request embeds it with a progress bar, later ones are instant."""
    area = progress_area or st.empty()
    loaded = server().vectors.of(entry, config, _progress_bar(entry, area))
    area.empty()
    return loaded


def finished(start: Callable[[bool], Job], what: str) -> Any:
    """The result of the job `start(again)` gives, shown with its progress and a Cancel button while it runs.

    The page waits by polling, so a click anywhere (Cancel, another page) ends the wait at once and
    the job goes on unless cancelled; the next visit picks it up. A cancelled job is said so with a
    button to start it again (`start(True)`), and the page stops there. A failed job's error is
    raised here. `what` is plain text (people see it as written).
    """
    job = start(False)
    if job.state == CANCELLED:
        notice = st.empty()
        with notice.container():
            st.warning(f"{plain(what)} was cancelled.")
            if not st.button("Start again", key=f"again: {what}"):
                st.stop()
        notice.empty()
        job = start(True)
    if not job.wait(POLL_SECONDS):  # work this short shows no progress bar
        area = st.empty()
        with area.container():
            bar = st.progress(0.0, text=plain(what))
            if st.button("Cancel", key=f"cancel: {what}"):
                job.cancel()
            while not job.wait(POLL_SECONDS):
                # Chromium animates every move of the bar: four moves a second took a tenth of a core,
                # which on a machine running both the browser and the server slows the job itself. The
                # bar moves in BAR_STEP steps and the label changes once a second; it is sent unchanged
                # in between, which costs the browser next to nothing and lets a click end the wait.
                fraction = int((job.fraction or 0.0) / BAR_STEP) * BAR_STEP
                bar.progress(fraction, text=plain(f"{what}: {job.stage} · {job.seconds:.0f} s"))
        area.empty()
    if job.state == CANCELLED:
        st.rerun()  # the next run says so and offers to start again
    if job.state == FAILED:
        raise job.error
    return job.result


def active_analysis() -> ActiveAnalysis:
    """The active dataset embedded (or fetched) and analysed, once per server; on a problem, say so and stop the page."""
    from core.session.vectors import saved_predict_config

    ws = workspace()
    chosen = chosen_model(ws)
    try:
        # Waits only while the background load runs; a loaded model answers at once.
        with st.spinner(
            f"Loading the model {plain(chosen.model)}; the page fills in once it is ready…"
        ):
            plan = server().plan(ws)
        for member in plan.recipe.left_out:
            st.warning(f"Ensemble member {plain(member)} is left out: it cannot be loaded here.")
        area = st.empty()
        loaded = server().vectors.of_recipe(
            plan.entry, plan.recipe, _progress_bar(plan.entry, area)
        )
        area.empty()
        config, config_notes = saved_predict_config(ws)
        analysis = finished(
            lambda again: server().analysis_job(plan, loaded, config, again),
            f"Analysing {plan.entry.name}",
        )
    except (ValueError, OSError, ModelUnavailableError) as error:
        name = server().datasets(ws).chosen().name
        st.error(f"**{plain(name)}** cannot be analysed: {plain(error)}")
        st.info("Pick another dataset on the **Data** page, or fix the source and reload.")
        st.stop()
    for note in config_notes + analysis.notes:
        st.caption(f"Note: {plain(note)}")
    if plan.model_note:
        st.info(
            f"Using the **baseline embedder** (downscaled pixels): {plain(chosen.model)} cannot be loaded here."
        )
        with st.expander("Why, and how to get CLIP"):
            st.markdown(plain(plan.model_note) + "\n\n" + HOW_TO_GET_CLIP)
    return ActiveAnalysis(ws, plan.entry, plan.embed_config, loaded, analysis, plan.model_note)


def projection(current: ActiveAnalysis, config) -> Any:
    """A 2-D map of train and test (core.maps.projection), computed once per vectors and settings."""
    from core.maps.projection import METHOD_NAMES

    points = count_text(len(current.analysis.train.ids) + len(current.analysis.test.ids))
    return finished(
        lambda again: server().projection_job(current, config, again),
        f"Computing the {METHOD_NAMES[config.method]} map of {points} points",
    )


def audit(current: ActiveAnalysis) -> Any:
    """The audit of the active analysis (core.audit.findings), once per server."""
    return finished(
        lambda again: server().audit_job(current, again), f"Auditing {current.entry.name}"
    )


def dbscan_flags(current: ActiveAnalysis, config) -> np.ndarray:
    with st.spinner("Clustering train and test with DBSCAN…"):
        return server().dbscan_flags(current, config)


# ── queries ──────────────────────────────────────────────────────────────────


def show_no_text_support(current: ActiveAnalysis, task: str) -> None:
    """Say that the model in use cannot embed text, and how to get CLIP unless the model note already did."""
    how = "" if current.model_note else f"\n\n{HOW_TO_GET_CLIP}"
    st.info(
        f"The model in use ({plain(server().query_model(current).config.model)}) embeds images only, so it cannot {task}: that needs "
        f"a CLIP model, whose text and image towers share one space.{how}"
    )
