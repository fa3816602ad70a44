"""The dashboard's one bridge to core: the user's workspace, shared models and data, and page helpers."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from core.embedding.cache import EmbeddingCache
from core.records import TEST, TRAIN, Dataset, Embeddings, Rejected
from core.io.demo import write_demo_dataset, write_digits_dataset
from core.embedding.config import BASELINE_MODEL, DEFAULT_MODEL, EmbedConfig
from core.embedding.embedder import Embedder
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import embed_dataset, embed_texts_cached, load_embedder
from core.methods.ensemble import combine
from core.retrieval.index import Neighbours, VectorIndex
from core.io.archives import safe_extract_zip
from core.io.images import IMAGE_EXTENSIONS, ImageRejected, load_image
from core.io.layouts import load_dataset
from core.io.parquet import write_embeddings
from core.io.texts import load_texts
from core.retrieval.pipeline import (
    Analysis,
    LoadedEmbeddings,
    PredictConfig,
    analyse,
    is_embeddings_file,
    load_embeddings,
    search_and_rank,
)
from core.maps.projection import Projection, ProjectionCache, ProjectionConfig, project, projection_key
from core.paths import confined_path, safe_file_name, workspace_home
from core.session.workspace import DatasetEntry, Workspace

HOW_TO_GET_CLIP = (
    "To use CLIP, put a checkpoint where this server can read it: a folder made with "
    "`save_pretrained` (enter its path as the model), or a Hugging Face cache holding "
    f"`{DEFAULT_MODEL}` (set `HF_HOME`), or allow downloads by unsetting `HF_HUB_OFFLINE`."
)
THUMBNAIL_EDGE = 160
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def plain(text) -> str:
    """User-provided text (labels, ids, file names) made inert inside Markdown: no links, images or markup."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


# ── workspace ────────────────────────────────────────────────────────────────


def workspace() -> Workspace:
    """This browser tab's workspace: its id lives in the URL, so a reload or restart finds it again."""
    if PagesManager.uses_pages_directory:
        # A bookmarked page opened first on a fresh server runs alone, in Streamlit's legacy
        # pages-folder mode; switch to app.py's st.navigation and run again from the top.
        PagesManager.uses_pages_directory = False
        st.rerun()
    workspace_id = st.query_params.get("ws")
    if "workspace" in st.session_state and workspace_id in (None, st.session_state.workspace.id):
        # Switching pages drops the query string; put the id back so the address stays a bookmark.
        st.query_params["ws"] = st.session_state.workspace.id
        return st.session_state.workspace
    try:
        current = Workspace(workspace_id) if workspace_id else None
    except ValueError as error:
        st.warning(f"{error}. A new workspace was opened.")
        current = None
    if current is None:
        current = Workspace(Workspace.new_id())
        st.query_params["ws"] = current.id
    st.session_state.workspace = current
    return current


@st.cache_resource(show_spinner="Writing the built-in datasets…")
def builtin_datasets() -> list[DatasetEntry]:
    """The demo and digits datasets, written once per server (no download)."""
    root = workspace_home() / "builtin"
    return [
        DatasetEntry("demo: coloured shapes", str(write_demo_dataset(root)), "demo"),
        DatasetEntry("digits (scikit-learn)", str(write_digits_dataset(root)), "digits"),
    ]


def datasets(ws: Workspace) -> list[DatasetEntry]:
    return builtin_datasets() + ws.datasets()


def active_dataset(ws: Workspace) -> DatasetEntry:
    known = {entry.name: entry for entry in datasets(ws)}
    return known.get(ws.get("dataset"), builtin_datasets()[0])


def _saved_config(ws: Workspace, key: str, config_type):
    """A config saved in the workspace, or the defaults when absent or no longer valid."""
    saved = ws.get(key)
    try:
        return config_type(**saved) if saved else config_type()
    except (TypeError, ValueError):
        return config_type()


def active_model(ws: Workspace) -> EmbedConfig:
    return _saved_config(ws, "embed_config", EmbedConfig)


def predict_config(ws: Workspace) -> PredictConfig:
    return _saved_config(ws, "predict_config", PredictConfig)


def threshold_key(entry: DatasetEntry, model: str) -> str:
    return f"threshold:{entry.name}:{model}"


def data_root() -> Path:
    """The one folder a served dashboard may open datasets from ($RETRIEVAL_LAB_DATA_ROOT)."""
    configured = os.environ.get("RETRIEVAL_LAB_DATA_ROOT")
    root = Path(configured).expanduser() if configured else workspace_home() / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _register(ws: Workspace, name: str, source: Path, kind: str) -> DatasetEntry:
    taken = {entry.name for entry in datasets(ws)}
    unique, copy = name.strip() or kind, 1
    while unique in taken:
        copy += 1
        unique = f"{name} ({copy})"
    entry = DatasetEntry(unique, str(source), kind)
    read_dataset(entry.source) if kind != "parquet" else load_embeddings(entry.source)
    ws.add_dataset(entry)
    return entry


def add_folder(ws: Workspace, relative: str) -> DatasetEntry:
    folder = confined_path(data_root(), relative)
    if not folder.is_dir():
        raise ValueError(f"{relative!r} is not a folder under the data root {data_root()}")
    return _register(ws, folder.name, folder, "folder")


def add_upload(ws: Workspace, name: str, files) -> DatasetEntry:
    """Store uploaded files in the workspace and register them as a dataset.

    One .zip or one .parquet stands alone. Otherwise a train.csv (image,label) plus images: the
    images it lists sit beside it, the others become test images.
    """
    folder = f"{safe_file_name(name, 'upload')}-{int(time.time())}"
    suffixes = {Path(f.name).suffix.lower() for f in files}
    if len(files) == 1 and suffixes <= {".zip", ".parquet"}:
        stored = ws.save_upload(folder, files[0].name, files[0].getvalue())
        if stored.suffix == ".parquet":
            return _register(ws, name, stored, "parquet")
        extracted = stored.with_suffix("")
        refused = safe_extract_zip(stored, extracted)
        stored.unlink()
        ws.set(f"refused:{extracted}", [[r.name, r.reason] for r in refused])
        return _register(ws, name, extracted, "upload")
    csvs = [f for f in files if f.name.lower().endswith(".csv")]
    if len(csvs) != 1 or safe_file_name(csvs[0].name) != "train.csv":
        raise ValueError(
            "upload one .zip, one .parquet, or a train.csv (columns image,label) together with its images"
        )
    listed = {row.get("image", "") for row in csv.DictReader(io.StringIO(csvs[0].getvalue().decode("utf-8-sig")))}
    for upload in files:
        subfolder = folder if upload in csvs or upload.name in listed else f"{folder}/test"
        ws.save_upload(subfolder, upload.name, upload.getvalue())
    return _register(ws, name, ws.files / safe_file_name(folder), "upload")


def refused_on_upload(ws: Workspace, entry: DatasetEntry) -> list[Rejected]:
    """Archive entries refused when an upload was unpacked (the dataset itself never saw them)."""
    return [Rejected(name, reason) for name, reason in ws.get(f"refused:{entry.source}", [])]


# ── models ───────────────────────────────────────────────────────────────────


@dataclass
class SharedModel:
    """One loaded model for every session; the lock keeps two users from oversubscribing the cores."""

    embedder: Embedder
    lock: threading.Lock


@st.cache_resource(show_spinner="Loading the model…")
def _load_shared_model(config: EmbedConfig) -> SharedModel | str:
    # An unavailable model is remembered too, so no rerun waits for the Hub again.
    try:
        return SharedModel(load_embedder(config), threading.Lock())
    except ModelUnavailableError as error:
        return str(error)


def _shared_model(config: EmbedConfig) -> SharedModel:
    loaded = _load_shared_model(config)
    if isinstance(loaded, str):
        raise ModelUnavailableError(loaded)
    return loaded


def model_for(config: EmbedConfig) -> tuple[EmbedConfig, SharedModel, str | None]:
    """The model to use and, when CLIP is unavailable and the baseline stands in, why."""
    loaded = _load_shared_model(config)
    if isinstance(loaded, SharedModel):
        return config, loaded, None
    baseline = replace(config, model=BASELINE_MODEL, precision="fp32")
    return baseline, _shared_model(baseline), loaded


# ── data ─────────────────────────────────────────────────────────────────────


@st.cache_data(show_spinner="Reading the dataset…", max_entries=32)
def read_dataset(source: str) -> Dataset:
    return load_dataset(source)


def image_paths(entry: DatasetEntry) -> dict[str, Path]:
    """Image file of each item id; empty for Parquet sources, which carry vectors only."""
    if is_embeddings_file(entry.source):
        return {}
    return {item.id: item.path for item in read_dataset(entry.source).items}


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, edge: int = THUMBNAIL_EDGE):
    """A small RGB copy of an image, or None when it cannot be read."""
    try:
        image = load_image(Path(path), draft_size=edge)
    except ImageRejected:
        return None
    image.thumbnail((edge, edge))
    return np.asarray(image)


@st.cache_resource(show_spinner=False)
def embedding_cache() -> EmbeddingCache:
    """One connection to the SQLite embedding cache for the whole server (it is thread-safe)."""
    return EmbeddingCache()


@st.cache_resource(show_spinner=False)
def _embedded() -> dict:
    """Embedded datasets shared by every session: large read-only arrays, never copied per rerun."""
    return {"lock": threading.Lock(), "results": {}}


def embeddings(entry: DatasetEntry, config: EmbedConfig, progress_area=None) -> LoadedEmbeddings:
    """Vectors of a dataset; the first request embeds it with a progress bar, later ones are instant."""
    store = _embedded()
    key = (entry.source, config)
    if key in store["results"]:
        return store["results"][key]
    with store["lock"]:
        if key not in store["results"]:
            store["results"][key] = _embed_with_progress(entry, config, progress_area or st.empty())
    return store["results"][key]


def _embed_with_progress(entry: DatasetEntry, config: EmbedConfig, area) -> LoadedEmbeddings:
    if is_embeddings_file(entry.source):
        return load_embeddings(entry.source)
    model = _shared_model(config)
    bar = area.progress(0.0, text=f"Embedding {entry.name} with {config.model}…")
    started = time.perf_counter()

    def progress(done: int, total: int, images_per_second: float) -> None:
        remaining = (total - done) / images_per_second if images_per_second else 0.0
        bar.progress(
            done / total if total else 1.0,
            text=f"{done}/{total} images · {images_per_second:.1f} images/s · ETA {remaining:.0f} s",
        )

    with model.lock:
        run = embed_dataset(read_dataset(entry.source), model.embedder, embedding_cache(), config.batch_size, progress)
    area.empty()
    dataset = read_dataset(entry.source)
    return LoadedEmbeddings(
        run.embeddings, dataset.rejected + run.rejected, run.computed, run.from_cache, time.perf_counter() - started
    )


# An ensemble recipe: (model config, weight) pairs, the main model first with weight 1.
Recipe = tuple[tuple[EmbedConfig, float], ...]


def ensemble_recipe(ws: Workspace, main: EmbedConfig) -> Recipe:
    """The main model plus the ensemble members saved on the Embed page (seed 000)."""
    members = []
    for saved in ws.get("ensemble") or []:
        try:
            member = (replace(main, model=str(saved["model"])), float(saved["weight"]))
        except (KeyError, TypeError, ValueError):
            continue
        unavailable = _load_shared_model(member[0])
        if isinstance(unavailable, str):
            st.warning(f"Ensemble member `{member[0].model}` is left out: it cannot be loaded here.")
            continue
        members.append(member)
    return ((main, 1.0), *members)


def ensemble_embeddings(entry: DatasetEntry, recipe: Recipe) -> LoadedEmbeddings:
    """Each member's vectors, norm-scaled and combined with its weight (core.methods.ensemble.combine)."""
    store = _embedded()
    key = (entry.source, recipe)
    if key not in store["results"]:
        parts = [embeddings(entry, config) for config, _ in recipe]
        combined = combine([part.embeddings for part in parts], [weight for _, weight in recipe])
        refused = list({(r.name, r.reason): r for part in parts for r in part.rejected}.values())
        store["results"][key] = LoadedEmbeddings(
            combined,
            refused,
            sum(part.computed for part in parts),
            sum(part.from_cache for part in parts),
            sum(part.seconds for part in parts),
        )
    return store["results"][key]


@st.cache_resource(show_spinner="Searching test against train…", max_entries=16)
def _analysis(source: str, recipe: EmbedConfig | Recipe, config: PredictConfig) -> Analysis:
    return analyse(_embedded()["results"][(source, recipe)].embeddings, config)


@dataclass
class Session:
    """What every analysis page needs: the workspace, dataset, model in use and the analysis."""

    ws: Workspace
    entry: DatasetEntry
    embed_config: EmbedConfig
    loaded: LoadedEmbeddings
    analysis: Analysis
    model_note: str | None

    @property
    def model(self) -> SharedModel:
        return _shared_model(self.embed_config)

    @property
    def threshold(self) -> float:
        saved = self.ws.get(threshold_key(self.entry, self.loaded.embeddings.model))
        return float(saved) if saved is not None else self.analysis.threshold

    def save_threshold(self, value: float) -> None:
        self.ws.set(threshold_key(self.entry, self.loaded.embeddings.model), float(value))

    def image(self, item_id: str):
        path = image_paths(self.entry).get(item_id)
        return None if path is None else thumbnail(str(path))


def session() -> Session:
    """Embed (or fetch) the active dataset and analyse it; on a problem, say so and stop the page."""
    ws = workspace()
    entry = active_dataset(ws)
    try:
        embed_config, _, note = model_for(active_model(ws))
        recipe = ensemble_recipe(ws, embed_config)
        if len(recipe) == 1:
            loaded = embeddings(entry, embed_config)
            analysis = _analysis(entry.source, embed_config, predict_config(ws))
        else:
            loaded = ensemble_embeddings(entry, recipe)
            analysis = _analysis(entry.source, recipe, predict_config(ws))
    except (ValueError, OSError, ModelUnavailableError) as error:
        st.error(f"**{entry.name}** cannot be analysed: {error}")
        st.info("Pick another dataset on the **Data** page, or fix the source and reload.")
        st.stop()
    current = Session(ws, entry, embed_config, loaded, analysis, note)
    for analysis_note in analysis.notes:
        st.caption(f"Note: {plain(analysis_note)}")
    if note:
        st.info(f"Using the **baseline embedder** (downscaled pixels): `{active_model(ws).model}` cannot be loaded here.")
        with st.expander("Why, and how to get CLIP"):
            st.markdown(note + "\n\n" + HOW_TO_GET_CLIP)
    return current


# ── projections ──────────────────────────────────────────────────────────────


def projection(current: Session, config: ProjectionConfig) -> Projection:
    """A 2-D map of train and test, computed once per (vectors, config) and kept on disk."""
    train, test = current.analysis.train.vectors, current.analysis.test.vectors
    cache = ProjectionCache(workspace_home() / "projections")
    key = projection_key(train, test, config)
    stored = cache.get(key)
    if stored is not None:
        return stored
    area = st.empty()
    with area.status(f"Computing the {config.method.upper()} map of {len(train) + len(test)} points…") as status:
        result = project(train, test, config, progress=lambda stage: status.update(label=f"{stage}…"))
        cache.put(key, result)
    area.empty()
    return result


def split_counts(current: Session) -> dict[str, int]:
    emb = current.loaded.embeddings
    return {split: int(emb.mask(split).sum()) for split in (TRAIN, TEST)}


# ── queries, uploads and galleries ───────────────────────────────────────────

IMAGE_UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)


@st.cache_resource(show_spinner=False, max_entries=16)
def _train_index(source: str, embed_config: EmbedConfig, _train_vectors: np.ndarray) -> VectorIndex:
    # Keyed by dataset and model like the embeddings themselves; the vectors follow from those two.
    return VectorIndex(_train_vectors)


def search_train(current: Session, query_vectors: np.ndarray) -> tuple[Neighbours, list[list[str]], np.ndarray]:
    """Nearest train items, ranked labels and distractor scores of queries (core.retrieval.pipeline.search_and_rank)."""
    train = current.analysis.train
    index = _train_index(current.entry.source, current.embed_config, train.vectors)
    return search_and_rank(index, train.labels.astype(object), query_vectors, current.analysis.config)


def embed_images(current: Session, images: list) -> np.ndarray:
    """Vectors of query images; the model lock keeps sessions from running the model at once."""
    with current.model.lock:
        return current.model.embedder.embed_images(images)


def embed_texts(current: Session, texts: list[str]) -> np.ndarray:
    """Vectors of texts, from the embedding cache where possible, under the model lock."""
    with current.model.lock:
        return embed_texts_cached(texts, current.model.embedder, embedding_cache())


def show_no_text_support(current: Session, task: str) -> None:
    """Say that the model in use cannot embed text, and how to get CLIP unless the model note already did."""
    how = "" if current.model_note else f"\n\n{HOW_TO_GET_CLIP}"
    st.info(
        f"The model in use (`{current.embed_config.model}`) embeds images only, so it cannot {task}: that needs "
        f"a CLIP model, whose text and image towers share one space.{how}"
    )


def query_model_warning(current: Session) -> str | None:
    """A warning when queries would be embedded by another model than the one that made the dataset's vectors."""
    made_by, embedder = current.loaded.embeddings.model, current.model.embedder
    if made_by == embedder.identity:
        return None
    return (
        f"The dataset's vectors were made by `{made_by}`, but queries are embedded by `{embedder.identity}`: "
        "the two compare meaningfully only if they are the same model."
    )


def read_uploaded_images(uploads) -> tuple[list[str], list, list[Rejected]]:
    """Names and decoded images of uploaded files; refused files come back with their reason."""
    names, images, refused = [], [], []
    for upload in uploads:
        try:
            images.append(load_image(upload.getvalue(), name=upload.name))
            names.append(upload.name)
        except ImageRejected as rejection:
            refused.append(Rejected(upload.name, rejection.reason))
    return names, images, refused


def texts_from_upload(upload, column: str | None = None) -> list[str]:
    """Texts of an uploaded .txt (one per line) or .csv (a column), read by core.io.texts.load_texts."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / safe_file_name(upload.name, "texts.txt")
        path.write_bytes(upload.getvalue())
        return load_texts(path, column or None)


def embeddings_parquet(embeddings: Embeddings) -> bytes:
    """The embeddings as the bytes of a Parquet file (core.io.parquet.write_embeddings)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "embeddings.parquet"
        write_embeddings(path, embeddings)
        return path.read_bytes()


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
    """Thumbnails in rows of `per_row`, each with its caption; a missing image shows its caption alone."""
    for start in range(0, len(captions), per_row):
        for column, image, caption in zip(st.columns(per_row), images[start : start + per_row], captions[start : start + per_row]):
            with column:
                if image is None:
                    st.caption(f"{caption} (no image)")
                else:
                    st.image(image, caption=caption, width="stretch")
