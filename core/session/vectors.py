"""Vectors of each dataset for the whole server: embedded once with the shared model, kept in a bounded store, ensembles combined by recipe."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from core.analysis.loading import LoadedEmbeddings, load_embeddings
from core.embedding.cache import EmbeddingCache
from core.embedding.config import EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import ProgressCallback
from core.io.parquet import read_embeddings_checked, write_embeddings
from core.methods.ensemble import combine
from core.paths import safe_file_name
from core.prediction.config import PredictConfig
from core.prediction.placement import MAX_K
from core.records import Embeddings
from core.session.models import ModelShelf
from core.session.workspace import DatasetEntry, Workspace

ENSEMBLE_KEY = "ensemble"
PREDICT_KEY = "predict_config"
EXPORTS = "exports"
# Datasets × models whose vectors stay in memory; each is as large as its dataset's embeddings.
STORE_CAPACITY = 8
# The dashboard's settings until a user saves others: the threshold from the calibrated model
# (PredictConfig.auto), which needs no guess at the share of distractors; the contamination decides
# where train cannot back that choice.
DASHBOARD_DEFAULTS = PredictConfig(auto=True)


def predict_config(ws: Workspace) -> PredictConfig:
    """The saved prediction settings, made usable as `saved_predict_config` says."""
    return saved_predict_config(ws)[0]


def saved_predict_config(ws: Workspace) -> tuple[PredictConfig, list[str]]:
    """The saved prediction settings and, for people to read, what had to change to use them.

    Nothing saved gives DASHBOARD_DEFAULTS. A k outside 1..MAX_K (saved before k was bounded, or
    edited by hand) is clamped into it, the other settings kept, rather than failing every page;
    settings that cannot be used at all give the defaults.
    """
    saved, notes = ws.get(PREDICT_KEY), []
    if not saved:
        return DASHBOARD_DEFAULTS, notes
    k = saved.get("k") if isinstance(saved, dict) else None
    if type(k) is int and not 1 <= k <= MAX_K:
        used = min(max(k, 1), MAX_K)
        notes.append(
            f"k={k} was saved, outside 1 to {MAX_K}: k={used} is used (set k on Evaluate & export to save it)"
        )
        saved = saved | {"k": used}
    try:
        return PredictConfig(**saved), notes
    except (TypeError, ValueError) as error:
        return DASHBOARD_DEFAULTS, [
            *notes,
            f"the saved prediction settings cannot be used ({error}): the defaults are used",
        ]


def save_predict_config(ws: Workspace, config: PredictConfig) -> None:
    ws.set_config(PREDICT_KEY, config)


@dataclass(frozen=True)
class EnsembleMember:
    """A model saved to be combined with the main one, and its weight relative to the main model's 1."""

    model: str
    weight: float


def saved_ensemble(ws: Workspace) -> list[EnsembleMember]:
    """The ensemble members saved on the Embed page; malformed entries are skipped."""
    members = []
    for saved in ws.get(ENSEMBLE_KEY) or []:
        try:
            members.append(EnsembleMember(str(saved["model"]), float(saved["weight"])))
        except (KeyError, TypeError, ValueError):
            continue
    return members


def save_ensemble(ws: Workspace, members: Sequence[EnsembleMember]) -> None:
    ws.set(ENSEMBLE_KEY, [{"model": member.model, "weight": member.weight} for member in members])


@dataclass(frozen=True)
class Recipe:
    """How a dataset's vectors are made: the main model with weight 1, then the members that load here."""

    parts: tuple[tuple[EmbedConfig, float], ...]  # (model config, weight), the main model first
    left_out: tuple[str, ...] = ()  # saved members whose model cannot be loaded here

    @property
    def is_ensemble(self) -> bool:
        return len(self.parts) > 1


def ensemble_recipe(
    members: Sequence[EnsembleMember], main: EmbedConfig, models: ModelShelf
) -> Recipe:
    """The main model plus each saved member whose model loads here."""
    parts, left_out = [(main, 1.0)], []
    for member in members:
        config = replace(main, model=member.model)
        try:
            models.get(config)
        except ModelUnavailableError:
            left_out.append(member.model)
            continue
        parts.append((config, member.weight))
    return Recipe(tuple(parts), tuple(left_out))


def reweighted(
    members: Sequence[EnsembleMember], recipe: Recipe, weights: Sequence[float]
) -> list[EnsembleMember]:
    """Saved members with the weights a search found for `recipe`'s parts, relative to the main model's.

    The weights follow the recipe's parts, which leave out members that cannot load: those keep
    their saved weight instead of taking another member's.
    """
    main_weight, *found = weights
    if main_weight <= 0:
        raise ValueError(
            "the search left the main model out (weight 0): choose the best member as the main model"
        )
    searched = {
        config.model: weight / main_weight for (config, _), weight in zip(recipe.parts[1:], found)
    }
    return [replace(member, weight=searched.get(member.model, member.weight)) for member in members]


class VectorStore:
    """Loaded embeddings by key, built once even when asked for at once; the least recently used go past `capacity`."""

    def __init__(self, capacity: int = STORE_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, LoadedEmbeddings] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        with self._guard:
            return key in self._entries

    def get(self, key: Hashable, build: Callable[[], LoadedEmbeddings]) -> LoadedEmbeddings:
        found = self._lookup(key)
        if found is not None:
            return found
        with self._guard:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            found = self._lookup(key)
            if found is not None:
                return found
            try:
                value = build()
            finally:
                with self._guard:
                    self._building.pop(key, None)
            with self._guard:
                self._entries[key] = value
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            return value

    def _lookup(self, key: Hashable) -> LoadedEmbeddings | None:
        with self._guard:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]


class DatasetVectors:
    """Each dataset's vectors for every session: the shared model embeds, the store keeps the result."""

    def __init__(
        self, models: ModelShelf, cache: EmbeddingCache | None, store: VectorStore | None = None
    ):
        self.models = models
        self.cache = cache
        self.store = store or VectorStore()

    def of(
        self, entry: DatasetEntry, config: EmbedConfig, progress: ProgressCallback | None = None
    ) -> LoadedEmbeddings:
        """The dataset's vectors by one model; the first request embeds them (Parquet files carry their own)."""
        return self.store.get((entry.source, config), lambda: self._load(entry, config, progress))

    def of_recipe(
        self, entry: DatasetEntry, recipe: Recipe, progress: ProgressCallback | None = None
    ) -> LoadedEmbeddings:
        """The vectors a recipe makes: one model's, or each member's norm-scaled and combined with its weight."""
        if not recipe.is_ensemble:
            return self.of(entry, recipe.parts[0][0], progress)
        return self.store.get(
            (entry.source, recipe.parts), lambda: self._combined(entry, recipe, progress)
        )

    def _load(
        self, entry: DatasetEntry, config: EmbedConfig, progress: ProgressCallback | None
    ) -> LoadedEmbeddings:
        if entry.kind == "parquet":
            # The read made when the dataset was added, if it is still kept (core.io.parquet).
            return LoadedEmbeddings(*read_embeddings_checked(entry.source))
        model = self.models.get(config)
        with model.lock:
            return load_embeddings(
                entry.source, config, self.cache, progress, embedder=model.embedder
            )

    def _combined(
        self, entry: DatasetEntry, recipe: Recipe, progress: ProgressCallback | None
    ) -> LoadedEmbeddings:
        parts = [self.of(entry, config, progress) for config, _ in recipe.parts]
        refused = {(r.name, r.reason): r for part in parts for r in part.rejected}
        return LoadedEmbeddings(
            combine([part.embeddings for part in parts], [weight for _, weight in recipe.parts]),
            list(refused.values()),
            sum(part.computed for part in parts),
            sum(part.from_cache for part in parts),
            sum(part.seconds for part in parts),
        )


def export_embeddings(ws: Workspace, name: str, embeddings: Embeddings) -> Path:
    """The embeddings written as Parquet into the workspace's exports (replacing an earlier export of that name)."""
    folder = ws.files / EXPORTS
    folder.mkdir(exist_ok=True)
    path = folder / f"{safe_file_name(name, 'dataset')}-embeddings.parquet"
    write_embeddings(path, embeddings)
    return path
