"""Streamlit glue for the pages: server-wide caches of core's services, the workspace from the URL, escaping, image grids."""

# Only light modules are imported here: the Data page and the sidebar must paint before torch,
# scikit-learn, FAISS or UMAP load. What the analysis pages need is imported where it is used.

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import streamlit as st

from core.display import count_text, inert
from core.embedding.cache import EmbeddingCache
from core.embedding.config import DEFAULT_MODEL, EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import load_embedder
from core.io.images import IMAGE_EXTENSIONS, thumbnail_image
from core.io.layouts import load_dataset
from core.paths import workspace_home
from core.progress import Watch
from core.records import Dataset
from core.session.datasets import WorkspaceDatasets, builtin_datasets
from core.session.jobs import CANCELLED, FAILED, Jobs
from core.session.models import (
    LOADING,
    UNAVAILABLE,
    ModelChoice,
    ModelShelf,
    SharedModel,
    chosen_model,
)
from core.session.queries import embed_images as embed_images_locked
from core.session.queries import embed_texts as embed_texts_locked
from core.session.queries import query_model_mismatch
from core.session.workspace import DatasetEntry, Workspace

if TYPE_CHECKING:
    from core.analysis.loading import LoadedEmbeddings
    from core.analysis.pipeline import Analysis
    from core.audit.findings import Audit
    from core.detection.distractors import DbscanConfig
    from core.maps.projection import Projection, ProjectionConfig
    from core.prediction.config import PredictConfig
    from core.search.index import Neighbours
    from core.session.vectors import DatasetVectors, Recipe

HOW_TO_GET_CLIP = (
    "To use CLIP, put a checkpoint where this server can read it: a folder made with "
    "`save_pretrained` under the data root (enter its path relative to it as the model), or a Hugging Face cache holding "
    f"`{DEFAULT_MODEL}` (set `HF_HOME`), or allow downloads by unsetting `HF_HUB_OFFLINE`."
)
THUMBNAIL_EDGE = 160
# the threshold slider's step is 10^-3; thresholds shown and used are on that grid
THRESHOLD_DECIMALS = 3
APP_RAN = "app-ran"  # session state: app.py has run in this session, so its navigation is in charge
OPEN_PAGE = "open"  # query parameter: the page a deep link asked for, carried through app.py
IMAGE_UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
POLL_SECONDS = 0.25  # how often a page waiting for a background job redraws its progress
# finished analyses kept in memory for the whole server (their searches are also on disk)
ANALYSES_KEPT = 16
PROJECTIONS_KEPT = 32  # finished projections kept in memory (small: two coordinates a point)


def plain(text) -> str:
    """Any text that came from a user or their data, made inert for Markdown (core.display.inert):
    ids, labels, file names, queries, dataset, model and workspace names, and error messages quoting them."""
    return inert(text)


# ── workspace and datasets ───────────────────────────────────────────────────


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


def datasets(ws: Workspace) -> WorkspaceDatasets:
    """The workspace's datasets; a built-in one is written (no download) when it is first opened."""
    return WorkspaceDatasets(ws, builtin_datasets(workspace_home() / "builtin"))


def open_action(given: str) -> str:
    """The words of the button that opens a dataset under the data root, named by what was given."""
    return "Open Parquet file" if given.strip().lower().endswith(".parquet") else "Open folder"


@st.cache_data(show_spinner="Reading the dataset…", max_entries=32)
def read_dataset(source: str) -> Dataset:
    return load_dataset(source)


def image_paths(entry: DatasetEntry) -> dict[str, Path]:
    """Image file of each item id; empty for Parquet sources, which carry vectors only."""
    if entry.kind == "parquet":
        return {}
    return {item.id: item.path for item in read_dataset(entry.source).items}


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, edge: int = THUMBNAIL_EDGE):
    """A small RGB copy of an image, or None when it cannot be read."""
    image = thumbnail_image(Path(path), edge)
    return None if image is None else np.asarray(image)


# ── models, loaded in the background ─────────────────────────────────────────


@st.cache_resource(show_spinner=False)
def model_shelf() -> ModelShelf:
    """The server's models: each loads once, in a background thread, for every session."""
    return ModelShelf(load_embedder)


@st.cache_resource(show_spinner=False)
def _projection_warm_up(first_model: EmbedConfig) -> threading.Thread:
    def warm_up_after_the_model() -> None:
        # numba compiles UMAP on first use; paying it after the model keeps both off the first page,
        # and after any analysis under way keeps it off the user's first look at their data.
        model_shelf().start(first_model).exception()
        jobs = analysis_jobs()
        while jobs.busy():
            time.sleep(POLL_SECONDS)
        from core.maps.projection import warm_up

        warm_up()

    thread = threading.Thread(target=warm_up_after_the_model, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def _analysis_import_warm_up() -> threading.Thread:
    def import_the_analysis() -> None:
        # scikit-learn and SciPy take over a second to import: paid once per server, before the first
        # dataset is opened, it stays off the first analysis a user waits for.
        importlib.import_module("core.analysis.pipeline")

    thread = threading.Thread(target=import_the_analysis, name="analysis-import", daemon=True)
    thread.start()
    return thread


def start_background_work(ws: Workspace) -> None:
    """Once this script run has ended: import the analysis, load the workspace's model, then compile UMAP, and
    analyse an active Parquet (its vectors need no model), each in a background thread.

    Returns at once. app.py calls it before every page: the page paints first, as the work waits for its run
    to end, and no page can keep it from starting, whatever the page does to end its run."""
    chosen = chosen_model(ws)
    entry = datasets(ws).chosen()

    def start() -> None:
        _analysis_import_warm_up()
        model_shelf().start(chosen)
        if entry.kind == "parquet":
            _start_vectors_analysis(ws, entry, chosen)
        _projection_warm_up(chosen)

    _after_this_run("background-work", start)


def _after_this_run(name: str, work: Callable[[], None]) -> None:
    """`work` in a daemon thread once the script thread calling this has ended (at once outside a script run).

    The thread carries the run's context, so it may call the server's cached resources."""
    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    context = get_script_run_ctx(suppress_warning=True)
    # Streamlit's script thread ends once its session has no rerun queued: st.stop() cannot end it early.
    script_thread = threading.current_thread() if context is not None else None

    def after_the_run() -> None:
        if script_thread is not None:
            script_thread.join()
        work()

    thread = threading.Thread(target=after_the_run, name=name, daemon=True)
    add_script_run_ctx(thread, context)
    thread.start()


def _start_vectors_analysis(ws: Workspace, entry: DatasetEntry, chosen: EmbedConfig) -> None:
    from core.session.vectors import predict_config

    try:
        loaded = dataset_vectors().of(entry, chosen)
    except (ValueError, OSError):
        return  # the analysis pages say what is wrong with the file when they open it
    _start_analysis(entry, _vectors_only(chosen), predict_config(ws), loaded)


def show_sidebar(ws: Workspace) -> None:
    """The dataset, model and workspace lines; none waits: the dataset is named, not opened, and the model's load
    is reported, not awaited."""
    with st.sidebar:
        st.caption(f"Dataset: **{plain(datasets(ws).chosen().name)}**")
        st.caption(f"Model: **{plain(model_status(ws))}**")
        st.caption(f"Workspace {plain(ws.id)} — bookmark this page's address to come back to it.")


def model_status(ws: Workspace) -> str:
    """The chosen model's name and how its load goes, without waiting for it."""
    config = chosen_model(ws)
    state = model_shelf().state(config)
    # None: the load starts once this page has run (start_background_work).
    if state in (LOADING, None):
        status = f"{config.model} (loading…)"
    elif state == UNAVAILABLE:
        status = f"baseline ({config.model} unavailable)"
    else:
        status = config.model
    if datasets(ws).chosen().kind == "parquet":
        return f"{status}, for queries only: the dataset's vectors came with its file"
    return status


# ── vectors and analysis ─────────────────────────────────────────────────────


@st.cache_resource(show_spinner=False)
def embedding_cache() -> EmbeddingCache:
    """One connection to the SQLite embedding cache for the whole server (it is thread-safe)."""
    return EmbeddingCache()


@st.cache_resource(show_spinner=False)
def dataset_vectors() -> DatasetVectors:
    """Embedded datasets shared by every session, in a bounded store: large read-only arrays, never copied per rerun."""
    from core.session.vectors import DatasetVectors

    return DatasetVectors(model_shelf(), embedding_cache())


def _progress_bar(entry: DatasetEntry, area):
    def progress(done: int, total: int, images_per_second: float) -> None:
        remaining = (total - done) / images_per_second if images_per_second else 0.0
        text = f"{count_text(done)}/{count_text(total)} images of {plain(entry.name)} · {images_per_second:.1f} images/s · ETA {remaining:.0f} s"
        area.progress(done / total if total else 1.0, text=text)

    return progress


def embeddings(entry: DatasetEntry, config: EmbedConfig, progress_area=None) -> LoadedEmbeddings:
    """Vectors of a dataset by one model; the first request embeds it with a progress bar, later ones are instant."""
    area = progress_area or st.empty()
    loaded = dataset_vectors().of(entry, config, _progress_bar(entry, area))
    area.empty()
    return loaded


def ensemble_embeddings(entry: DatasetEntry, recipe: Recipe) -> LoadedEmbeddings:
    area = st.empty()
    loaded = dataset_vectors().of_recipe(entry, recipe, _progress_bar(entry, area))
    area.empty()
    return loaded


@st.cache_resource(show_spinner=False)
def analysis_jobs() -> Jobs:
    """Analyses for the whole server, each run once in the background; the last ANALYSES_KEPT stay in memory."""
    return Jobs(keep=ANALYSES_KEPT)


@st.cache_resource(show_spinner=False)
def projection_jobs() -> Jobs:
    """Projections for the whole server, each run once in the background (they are kept on disk as well)."""
    return Jobs(keep=PROJECTIONS_KEPT)


def finished(jobs: Jobs, key: Hashable, work: Callable[[Watch], Any], what: str) -> Any:
    """What `work` returns, run once per key in the background while the page shows its progress and a Cancel button.

    The page waits by polling, so a click anywhere (Cancel, another page) ends the wait at once and
    the job goes on unless cancelled; the next visit picks it up. A cancelled job is said so with a
    button to start it again, and the page stops there. A failed job's error is raised here. `what`
    is plain text (people see it as written).
    """
    job = jobs.start(key, work)
    if job.state == CANCELLED:
        notice = st.empty()
        with notice.container():
            st.warning(f"{plain(what)} was cancelled.")
            if not st.button("Start again", key=f"again: {what}"):
                st.stop()
        notice.empty()
        job = jobs.start(key, work, again=True)
    if not job.wait(POLL_SECONDS):  # work this short shows no progress bar
        area = st.empty()
        with area.container():
            bar = st.progress(0.0, text=plain(what))
            if st.button("Cancel", key=f"cancel: {what}"):
                job.cancel()
            while not job.wait(POLL_SECONDS):
                bar.progress(
                    job.fraction or 0.0, text=plain(f"{what}: {job.text} · {job.seconds:.0f} s")
                )
        area.empty()
    if job.state == CANCELLED:
        st.rerun()  # the next run says so and offers to start again
    if job.state == FAILED:
        raise job.error
    return job.result


def _analysis_work(config: PredictConfig, loaded: LoadedEmbeddings) -> Callable[[Watch], Analysis]:
    from core.analysis.pipeline import analyse
    from core.search.store import SearchStore

    store = SearchStore(workspace_home() / "analyses")
    return lambda watch: analyse(loaded.embeddings, config, store, watch)


def _start_analysis(
    entry: DatasetEntry, recipe: Recipe, config: PredictConfig, loaded: LoadedEmbeddings
) -> None:
    """Begin the analysis in the background, unless it runs or ran already: a page asking for it later picks it up."""
    analysis_jobs().start((entry.source, recipe, config), _analysis_work(config, loaded))


def _analysis(
    entry: DatasetEntry, recipe: Recipe, config: PredictConfig, loaded: LoadedEmbeddings
) -> Analysis:
    """The dataset's analysis, once per server (keyed by dataset, recipe and config: the vectors follow from the first
    two); its searches are kept on disk, so a restart reads them."""
    return finished(
        analysis_jobs(),
        (entry.source, recipe, config),
        _analysis_work(config, loaded),
        f"Analysing {entry.name}",
    )


def audit(current: Session) -> Audit:
    """The audit of the session's analysis, once per server, run in the background with its progress."""
    from core.audit.findings import audit as audit_data

    return finished(
        analysis_jobs(),
        ("audit", current.entry.source, current.loaded.embeddings.model, current.analysis.config),
        lambda watch: audit_data(current.analysis, watch=watch),
        f"Auditing {current.entry.name}",
    )


def _vectors_only(config: EmbedConfig) -> Recipe:
    """The recipe of a Parquet dataset: its vectors came with the data, whatever model loads here."""
    from core.session.vectors import Recipe

    return Recipe(((config, 1.0),))


@dataclass
class Session:
    """What every analysis page needs: the workspace, dataset, model in use and the analysis."""

    ws: Workspace
    entry: DatasetEntry
    embed_config: EmbedConfig
    loaded: LoadedEmbeddings
    analysis: Analysis
    model_note: str | None  # why the chosen model cannot load, when the page said so

    @property
    def query_choice(self) -> ModelChoice:
        """The model that embeds queries: the chosen one, or the baseline standing in (waits for a load under way).

        For a Parquet dataset the pages never waited for it: only a query does."""
        return model_shelf().choose(self.embed_config)

    @property
    def model(self) -> SharedModel:
        return self.query_choice.model

    @property
    def threshold(self) -> float:
        """The saved threshold, else the default rule's, on the slider's grid: every page uses this one."""
        saved = self.ws.get(threshold_key(self.entry, self.loaded.embeddings.model))
        return round(
            float(saved) if saved is not None else self.analysis.threshold, THRESHOLD_DECIMALS
        )

    def save_threshold(self, value: float) -> None:
        self.ws.set(threshold_key(self.entry, self.loaded.embeddings.model), float(value))

    def image(self, item_id: str):
        path = image_paths(self.entry).get(item_id)
        return None if path is None else thumbnail(str(path))


def threshold_key(entry: DatasetEntry, model: str) -> str:
    return f"threshold:{entry.name}:{model}"


def session() -> Session:
    """Embed (or fetch) the active dataset and analyse it; on a problem, say so and stop the page."""
    from core.session.vectors import ensemble_recipe, saved_ensemble, saved_predict_config

    ws = workspace()
    entry = datasets(ws).active()
    chosen = chosen_model(ws)
    try:
        if entry.kind == "parquet":
            # A Parquet's vectors came with the data: no model is waited for, and none is said to be missing.
            embed_config, recipe, model_note = chosen, _vectors_only(chosen), None
        else:
            with st.spinner(
                f"Loading the model {plain(chosen.model)}; the page fills in once it is ready…"
            ):
                # Waits only while the background load runs; a loaded model answers at once.
                choice = model_shelf().choose(chosen)
                recipe = ensemble_recipe(saved_ensemble(ws), choice.config, model_shelf())
            embed_config, model_note = choice.config, choice.unavailable
            for member in recipe.left_out:
                st.warning(
                    f"Ensemble member {plain(member)} is left out: it cannot be loaded here."
                )
        loaded = ensemble_embeddings(entry, recipe)
        config, config_notes = saved_predict_config(ws)
        analysis = _analysis(entry, recipe, config, loaded)
    except (ValueError, OSError, ModelUnavailableError) as error:
        st.error(f"**{plain(entry.name)}** cannot be analysed: {plain(error)}")
        st.info("Pick another dataset on the **Data** page, or fix the source and reload.")
        st.stop()
    current = Session(ws, entry, embed_config, loaded, analysis, model_note)
    for analysis_note in config_notes + analysis.notes:
        st.caption(f"Note: {plain(analysis_note)}")
    if model_note:
        st.info(
            f"Using the **baseline embedder** (downscaled pixels): {plain(chosen.model)} cannot be loaded here."
        )
        with st.expander("Why, and how to get CLIP"):
            st.markdown(plain(model_note) + "\n\n" + HOW_TO_GET_CLIP)
    return current


@st.cache_data(show_spinner="Clustering train and test with DBSCAN…", max_entries=32)
def _dbscan(source: str, model: str, config: DbscanConfig, _analysis: Analysis) -> np.ndarray:
    # Keyed by dataset, the model identity of its vectors and the settings; the vectors follow from the first two.
    return _analysis.dbscan(config)


def dbscan_flags(current: Session, config: DbscanConfig) -> np.ndarray:
    """Test items DBSCAN flags (core.detection.distractors), computed once per dataset, model and settings."""
    return _dbscan(current.entry.source, current.loaded.embeddings.model, config, current.analysis)


def projection(current: Session, config: ProjectionConfig) -> Projection:
    """A 2-D map of train and test, computed once per (vectors, config) in the background and kept on disk."""
    from core.maps.projection import METHOD_NAMES, kept_projection

    train, test = current.analysis.train.vectors, current.analysis.test.vectors

    def stored_or_projected(watch: Watch) -> Projection:
        # The disk key hashes every vector (0.15 s at 130k items): paid once per server here, not on
        # every run of the Map page, whose job is found by dataset, model identity and config. A
        # stage report is where a projection can be stopped: between its steps and every few t-SNE rounds.
        return kept_projection(train, test, config, progress=watch.stage)

    return finished(
        projection_jobs(),
        (current.entry.source, current.loaded.embeddings.model, config),
        stored_or_projected,
        f"Computing the {METHOD_NAMES[config.method]} map of {count_text(len(train) + len(test))} points",
    )


# ── queries ──────────────────────────────────────────────────────────────────


@st.cache_resource(show_spinner=False, max_entries=16)
def _train_index(source: str, embed_config: EmbedConfig, _train_vectors: np.ndarray):
    # Keyed by dataset and model like the embeddings themselves; the vectors follow from those two.
    from core.search.index import VectorIndex

    return VectorIndex(_train_vectors)


def search_train(
    current: Session, query_vectors: np.ndarray
) -> tuple[Neighbours, list[list[str]], np.ndarray]:
    """Nearest train items, ranked labels and distractor scores of queries (core.analysis.pipeline.search_and_rank)."""
    from core.analysis.pipeline import search_and_rank

    train = current.analysis.train
    index = _train_index(current.entry.source, current.embed_config, train.vectors)
    return search_and_rank(
        index, train.labels.astype(object), query_vectors, current.analysis.config
    )


def embed_images(current: Session, images: list) -> np.ndarray:
    return embed_images_locked(current.model, images)


def embed_texts(current: Session, texts: list[str]) -> np.ndarray:
    return embed_texts_locked(current.model, texts, embedding_cache())


def query_model_warning(current: Session) -> str | None:
    return query_model_mismatch(current.loaded.embeddings.model, current.model)


def show_no_text_support(current: Session, task: str) -> None:
    """Say that the model in use cannot embed text, and how to get CLIP unless the model note already did."""
    how = "" if current.model_note else f"\n\n{HOW_TO_GET_CLIP}"
    st.info(
        f"The model in use ({plain(current.query_choice.config.model)}) embeds images only, so it cannot {task}: that needs "
        f"a CLIP model, whose text and image towers share one space.{how}"
    )


# ── widgets ──────────────────────────────────────────────────────────────────


def selected_rows(event, n_rows: int) -> list[int]:
    """Rows picked on a map drawn with on_select: each point's customdata, first pick first, no repeats.

    Rows outside the table (a selection left over from other data) are dropped.
    """
    rows = []
    for point in event["selection"]["points"] if event else []:
        row = point.get("customdata")
        # Plotly hands back a list when a trace carries several customdata values per point.
        row = row[0] if isinstance(row, list) and row else row
        if isinstance(row, (int, float)) and 0 <= row < n_rows:
            rows.append(int(row))
    return list(dict.fromkeys(rows))


def image_grid(images: list, captions: list[str], per_row: int = 8) -> None:
    """Thumbnails in rows of `per_row`, each with its caption made inert; an item without an image (a Parquet
    row) is a card of its caption alone.

    Captions are plain text built from ids, labels and scores: this escapes them, callers do not."""
    for start in range(0, len(captions), per_row):
        for column, image, caption in zip(
            st.columns(per_row), images[start : start + per_row], captions[start : start + per_row]
        ):
            with column:
                if image is None:
                    st.container(border=True).markdown(plain(caption))
                else:
                    st.image(image, caption=plain(caption), width="stretch")
