"""The model a workspace chose, loaded once per server in the background, with the baseline standing in when it cannot load."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.embedding.embedder import Embedder
from core.embedding.hub import ModelUnavailableError
from core.session.workspace import Workspace

MODEL_KEY = "embed_config"
# What a model load can be doing, for a status line that never waits for it.
LOADING, READY, UNAVAILABLE = "loading", "ready", "unavailable"


def chosen_model(ws: Workspace) -> EmbedConfig:
    return ws.get_config(MODEL_KEY, EmbedConfig)


def choose_model(ws: Workspace, config: EmbedConfig) -> None:
    ws.set_config(MODEL_KEY, config)


def baseline_for(config: EmbedConfig) -> EmbedConfig:
    """The baseline embedder with the rest of `config`: what stands in when the model cannot load."""
    return replace(config, model=BASELINE_MODEL, precision="fp32")


@dataclass
class SharedModel:
    """One loaded model for every session; the lock keeps two users from oversubscribing the cores."""

    embedder: Embedder
    lock: threading.Lock


@dataclass(frozen=True)
class ModelChoice:
    """The model in use for a chosen config, and why the baseline stands in when it does."""

    config: EmbedConfig  # the chosen config, or its baseline stand-in
    model: SharedModel
    unavailable: str | None  # why the chosen model cannot load; None when it is the one in use


class ModelShelf:
    """Models shared by every session: each loads once, in a background thread, and a failure is remembered.

    One loader thread: two model loads at once would only fight over the cores.
    """

    def __init__(self, load: Callable[[EmbedConfig], Embedder]):
        self._load = load
        self._loads: dict[EmbedConfig, Future] = {}
        self._guard = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    def start(self, config: EmbedConfig) -> Future:
        """Begin loading `config`'s model unless it is loading or loaded already; returns its future."""
        with self._guard:
            if config not in self._loads:
                self._loads[config] = self._loader.submit(
                    lambda: SharedModel(self._load(config), threading.Lock())
                )
            return self._loads[config]

    def state(self, config: EmbedConfig) -> str | None:
        """LOADING, READY or UNAVAILABLE; None when nobody asked for the model yet. Never waits."""
        with self._guard:
            load = self._loads.get(config)
        if load is None:
            return None
        if not load.done():
            return LOADING
        return UNAVAILABLE if load.exception() is not None else READY

    def get(self, config: EmbedConfig) -> SharedModel:
        """The loaded model, waiting for its load; raises ModelUnavailableError when it cannot load."""
        return self.start(config).result()

    def choose(self, config: EmbedConfig) -> ModelChoice:
        """The model for `config`, or the baseline with the reason when `config`'s cannot load here."""
        try:
            return ModelChoice(config, self.get(config), None)
        except ModelUnavailableError as error:
            baseline = baseline_for(config)
            return ModelChoice(baseline, self.get(baseline), str(error))
