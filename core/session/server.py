"""What one dashboard server shares between its users: models, the embedding cache, loaded vectors, background jobs and what is derived from an analysis, each under one key rule."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from core.embedding.config import EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import load_embedder
from core.paths import workspace_home
from core.progress import Watch
from core.search.screen import load_compiled
from core.session.datasets import WorkspaceDatasets, builtin_datasets
from core.session.jobs import Job, Jobs
from core.session.models import LOADING, UNAVAILABLE, ModelChoice, ModelShelf, chosen_model
from core.session.queries import embed_images, embed_texts, query_model_mismatch
from core.session.thresholds import save_threshold, saved_threshold
from core.session.workspace import DatasetEntry, Workspace

if TYPE_CHECKING:
    import numpy as np

    from core.analysis.loading import LoadedEmbeddings
    from core.analysis.pipeline import Analysis
    from core.detection.distractors import DbscanConfig
    from core.embedding.cache import EmbeddingCache
    from core.maps.projection import Projection, ProjectionConfig
    from core.prediction.config import PredictConfig
    from core.search.index import Neighbours, VectorIndex
    from core.session.vectors import DatasetVectors, Recipe

# Finished analyses kept in memory for the whole server (their searches are also on disk).
ANALYSES_KEPT = 16
PROJECTIONS_KEPT = 32  # finished projections kept in memory (small: two coordinates a point)
INDEXES_KEPT = 16  # train indexes for queries kept in memory
WAIT_SECONDS = 0.25  # how often background work waiting for analyses looks again


@dataclass(frozen=True)
class VectorsKey:
    """What a dataset's vectors are: its source and the identity of the model (or ensemble) that made them.

    Whatever is computed from the vectors alone (a train index, a map) is keyed by this; the
    identity changes with the model, its precision and an ensemble's weights."""

    source: str
    vectors: str  # Embeddings.model of the loaded vectors


@dataclass(frozen=True)
class AnalysisKey:
    """An analysis: the vectors and the prediction settings. What is computed from an analysis (its audit,
    DBSCAN flags) is keyed by this and its own settings."""

    vectors: VectorsKey
    config: PredictConfig


@dataclass
class ActiveAnalysis:
    """What every analysis page of one user needs: the workspace, its dataset, the model in use and the analysis."""

    ws: Workspace
    entry: DatasetEntry
    embed_config: (
        EmbedConfig  # the model that embeds queries (the baseline when the chosen one cannot load)
    )
    loaded: LoadedEmbeddings
    analysis: Analysis
    model_note: str | None  # why the chosen model cannot load, when it cannot
    config_notes: list[str] = field(
        default_factory=list
    )  # what had to change in the saved settings

    @property
    def key(self) -> AnalysisKey:
        return AnalysisKey(
            VectorsKey(self.entry.source, self.loaded.embeddings.model), self.analysis.config
        )

    @property
    def threshold(self) -> float:
        """The saved threshold, else the analysis's rule's, on the slider's grid: every page uses this one."""
        return saved_threshold(
            self.ws, self.entry.name, self.loaded.embeddings.model, self.analysis.threshold
        )

    def save_threshold(self, threshold: float) -> None:
        save_threshold(self.ws, self.entry.name, self.loaded.embeddings.model, threshold)


@dataclass(frozen=True)
class Plan:
    """How the active dataset's vectors are made, settled before they are: the recipe and the model for queries."""

    entry: DatasetEntry
    recipe: Recipe
    embed_config: EmbedConfig
    model_note: str | None  # why the chosen model cannot load, when it cannot


class Server:
    """One per dashboard server: everything here is shared by every session and safe to use from threads."""

    def __init__(self) -> None:
        self.models = ModelShelf(load_embedder)
        self.analyses = Jobs(keep=ANALYSES_KEPT)
        self.projections = Jobs(keep=PROJECTIONS_KEPT)
        self._derived: dict = {}  # DBSCAN flags and train indexes, by their keys
        self._derived_lock = threading.Lock()
        self._warm_ups: dict[str, threading.Thread] = {}
        self._warm_up_lock = threading.Lock()

    # ── datasets and models ──────────────────────────────────────────────

    def datasets(self, ws: Workspace) -> WorkspaceDatasets:
        """The workspace's datasets; a built-in one is written (no download) when it is first opened."""
        return WorkspaceDatasets(ws, builtin_datasets(workspace_home() / "builtin"))

    def model_status(self, ws: Workspace) -> str:
        """The chosen model's name and how its load goes, without waiting for it."""
        config = chosen_model(ws)
        state = self.models.state(config)
        # None: the load starts once the page has run (start_background_work).
        if state in (LOADING, None):
            status = f"{config.model} (loading…)"
        elif state == UNAVAILABLE:
            status = f"baseline ({config.model} unavailable)"
        else:
            status = config.model
        if self.datasets(ws).chosen().kind == "parquet":
            return f"{status}, for queries only: the dataset's vectors came with its file"
        return status

    def query_model(self, current: ActiveAnalysis) -> ModelChoice:
        """The model that embeds queries: the chosen one, or the baseline standing in (waits for a load under way).

        For a Parquet dataset the pages never waited for it: only a query does."""
        return self.models.choose(current.embed_config)

    def embed_images(self, current: ActiveAnalysis, images: list) -> np.ndarray:
        """Query images embedded by the query model, one caller at a time."""
        return embed_images(self.query_model(current).model, images)

    def embed_texts(self, current: ActiveAnalysis, texts: list[str]) -> np.ndarray:
        """Query texts embedded by the query model (cached), one caller at a time."""
        return embed_texts(self.query_model(current).model, texts, self.embedding_cache)

    def supports_text(self, current: ActiveAnalysis) -> bool:
        return self.query_model(current).model.embedder.supports_text

    def query_model_warning(self, current: ActiveAnalysis) -> str | None:
        """A warning when queries are embedded by another model than the one that made the dataset's vectors."""
        return query_model_mismatch(
            current.loaded.embeddings.model, self.query_model(current).model
        )

    def search_train(
        self, current: ActiveAnalysis, query_vectors: np.ndarray
    ) -> tuple[Neighbours, list[list[str]], np.ndarray]:
        """Nearest train items, ranked labels and distractor scores of queries (core.analysis.pipeline.search_and_rank)."""
        from core.analysis.pipeline import search_and_rank

        labels = current.analysis.train.labels.astype(object)
        return search_and_rank(
            self.train_index(current), labels, query_vectors, current.analysis.config
        )

    @cached_property
    def embedding_cache(self) -> EmbeddingCache:
        """One connection to the SQLite embedding cache (it is thread-safe), opened when first needed."""
        from core.embedding.cache import EmbeddingCache

        return EmbeddingCache()

    @cached_property
    def vectors(self) -> DatasetVectors:
        """Embedded datasets, in a bounded store: large read-only arrays, never copied per page run."""
        from core.session.vectors import DatasetVectors

        return DatasetVectors(self.models, self.embedding_cache)

    # ── the active dataset's analysis ────────────────────────────────────

    def plan(self, ws: Workspace) -> Plan:
        """The active dataset and how its vectors are made. Waits while the chosen model loads (none for a
        Parquet, whose vectors came with it); raises ValueError or OSError for a dataset that cannot be read."""
        from core.session.vectors import Recipe, ensemble_recipe, saved_ensemble

        entry = self.datasets(ws).active()
        chosen = chosen_model(ws)
        if entry.kind == "parquet":
            return Plan(entry, Recipe(((chosen, 1.0),)), chosen, None)
        choice = self.models.choose(chosen)
        recipe = ensemble_recipe(saved_ensemble(ws), choice.config, self.models)
        return Plan(entry, recipe, choice.config, choice.unavailable)

    def analysis_job(
        self, plan: Plan, loaded: LoadedEmbeddings, config: PredictConfig, again: bool = False
    ) -> Job:
        """The analysis of these vectors with these settings: started once per server, in the background
        (`again`: even if it was cancelled); its searches are kept on disk, so a restart reads them."""
        from core.analysis.pipeline import analyse
        from core.search.store import SearchStore

        store = SearchStore(workspace_home() / "analyses")
        key = AnalysisKey(VectorsKey(plan.entry.source, loaded.embeddings.model), config)
        return self.analyses.start(
            key, lambda watch: analyse(loaded.embeddings, config, store, watch), again
        )

    def audit_job(self, current: ActiveAnalysis, again: bool = False) -> Job:
        from core.audit.findings import audit

        return self.analyses.start(
            ("audit", current.key), lambda watch: audit(current.analysis, watch=watch), again
        )

    def projection_job(
        self, current: ActiveAnalysis, config: ProjectionConfig, again: bool = False
    ) -> Job:
        """A 2-D map of train and test, computed once per vectors and settings, and kept on disk."""
        from core.maps.projection import kept_projection

        train, test = current.analysis.train.vectors, current.analysis.test.vectors

        def stored_or_projected(watch: Watch) -> Projection:
            # A stage report is where a projection can be stopped: between its steps and every few
            # t-SNE rounds.
            return kept_projection(train, test, config, progress=watch.stage)

        return self.projections.start((current.key.vectors, config), stored_or_projected, again)

    def what_if_job(
        self, current: ActiveAnalysis, drop: list[str], relabel: dict[str, str], again: bool = False
    ) -> Job:
        """The analysis again with train images dropped or relabelled (core.audit.effects.what_if)."""
        from core.audit.effects import what_if

        key = ("what if", current.key, tuple(drop), tuple(relabel.items()))
        return self.analyses.start(
            key, lambda watch: what_if(current.analysis, drop, relabel, watch), again
        )

    def dbscan_flags(self, current: ActiveAnalysis, config: DbscanConfig) -> np.ndarray:
        """Test items DBSCAN flags, computed once per analysis and settings (seconds at 13k, minutes at 130k)."""
        return self._derive(
            ("dbscan", current.key, config), lambda: current.analysis.dbscan(config)
        )

    def train_index(self, current: ActiveAnalysis) -> VectorIndex:
        """The index of the analysis's train vectors, for queries, once per vectors."""
        from core.search.index import VectorIndex

        return self._derive(
            ("train index", current.key.vectors),
            lambda: VectorIndex(current.analysis.train.vectors),
        )

    def _derive(self, key, compute: Callable):
        with self._derived_lock:
            if key in self._derived:
                return self._derived[key]
        value = compute()
        with self._derived_lock:
            self._derived[key] = value
            while len(self._derived) > INDEXES_KEPT:
                del self._derived[next(iter(self._derived))]
        return value

    # ── background work ──────────────────────────────────────────────────

    def start_background_work(self, ws: Workspace, after: Callable[[], None]) -> None:
        """In a background thread, once `after` returns (the page has run): import the analysis and the search's
        compiled steps, load the workspace's model, analyse an active Parquet (its vectors need no model), then
        compile UMAP. Returns at once."""
        chosen = chosen_model(ws)
        entry = self.datasets(ws).chosen()
        # Saved settings read now, in the page's thread, like every other read of the workspace.
        config = self._predict_config(ws)

        def work() -> None:
            after()
            # scikit-learn and SciPy take over a second to import: paid once per server, before the
            # first dataset is opened, it stays off the first analysis a user waits for.
            self._once("analysis-import", lambda: importlib.import_module("core.analysis.pipeline"))
            # the search's compiled steps, for every size a server searches (core.search.screen)
            self._once("search-kernels", load_compiled)
            self.models.start(chosen)
            if entry.kind == "parquet":
                self._analyse_vectors_file(entry, chosen, config)
            self._once("umap-warm-up", lambda: self._warm_up_projection(chosen))

        threading.Thread(target=work, name="background-work", daemon=True).start()

    @staticmethod
    def _predict_config(ws: Workspace) -> PredictConfig:
        from core.session.vectors import saved_predict_config

        return saved_predict_config(ws)[0]

    def _analyse_vectors_file(
        self, entry: DatasetEntry, chosen: EmbedConfig, config: PredictConfig
    ) -> None:
        from core.session.vectors import Recipe

        plan = Plan(entry, Recipe(((chosen, 1.0),)), chosen, None)
        try:
            loaded = self.vectors.of_recipe(entry, plan.recipe)
        except (ValueError, OSError, ModelUnavailableError):
            return  # the analysis pages say what is wrong with the file when they open it
        self.analysis_job(plan, loaded, config)

    def _warm_up_projection(self, model: EmbedConfig) -> None:
        # numba compiles UMAP on first use; paying it after the model keeps both off the first page,
        # and after any analysis under way keeps it off the user's first look at their data. The
        # compiling is done by a child, whose GIL is its own: the pages stay free to run meanwhile.
        self.models.start(model).exception()
        self._after_analyses()
        from core.maps.projection import compile_in_child_process, warm_up

        compile_in_child_process()
        # Loading what the child compiled holds this process's GIL for a second or more: an analysis
        # opened while the child compiled goes first.
        self._after_analyses()
        warm_up()

    def _after_analyses(self) -> None:
        while self.analyses.busy():
            time.sleep(WAIT_SECONDS)

    def _once(self, name: str, work: Callable[[], None]) -> None:
        """`work` in a thread of its own, once per server."""
        with self._warm_up_lock:
            if name in self._warm_ups:
                return
            thread = threading.Thread(target=work, name=name, daemon=True)
            self._warm_ups[name] = thread
        thread.start()
