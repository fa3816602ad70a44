"""The model a workspace chose, loaded once per server in the background, with the baseline standing in when it cannot load."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from core.embedding.config import BASELINE_MODEL, DEFAULT_MODEL, KNOWN_MODELS, EmbedConfig
from core.embedding.embedder import Embedder
from core.embedding.hub import ModelUnavailableError
from core.paths import HUB_REPO_ID, data_root, resolved_inside
from core.session.workspace import Workspace

MODEL_KEY = "embed_config"
# What a model load can be doing, for a status line that never waits for it.
LOADING, READY, UNAVAILABLE = "loading", "ready", "unavailable"


# What a dashboard user is told when CLIP cannot load here.
HOW_TO_GET_CLIP = (
    "To use CLIP, put a checkpoint where this server can read it: a folder made with "
    "`save_pretrained` under the data root (enter its path relative to it as the model), or a Hugging Face cache holding "
    f"`{DEFAULT_MODEL}` (set `HF_HOME`), or allow downloads by unsetting `HF_HUB_OFFLINE`."
)


def chosen_model(ws: Workspace) -> EmbedConfig:
    return ws.get_config(MODEL_KEY, EmbedConfig)


def choose_model(ws: Workspace, config: EmbedConfig) -> None:
    """Save `config` as the workspace's model, its model as served_model spells it; ValueError for a model a served dashboard may not load."""
    ws.set_config(MODEL_KEY, replace(config, model=served_model(config.model)))


def served_model(model: str) -> str:
    """`model` as a served dashboard loads it: the baseline, a Hugging Face id, or a checkpoint folder it may read.

    Those folders are the ones under the data root (given relative to it, as the Data page's
    folders are; the absolute path comes back) and in the Hugging Face cache. Any other folder of
    the server is refused with one ValueError, whether it exists or not: a dashboard user could
    otherwise load whatever the server can read. The command line loads any folder its user names.
    """
    from huggingface_hub import constants

    model = model.strip()
    if model == BASELINE_MODEL or model in KNOWN_MODELS:
        return model
    under_root = resolved_inside(data_root(), model)
    if under_root is not None and under_root.is_dir():
        return str(under_root)
    local = Path(model).expanduser()
    in_cache = local.is_absolute() and resolved_inside(Path(constants.HF_HUB_CACHE), local)
    if in_cache:
        return str(in_cache)
    # The loader takes a name that is a folder here for that folder, so such a name is no Hub id.
    if HUB_REPO_ID.fullmatch(model) and not local.exists():
        return model
    raise ValueError(
        f"{model!r} is not a model this dashboard can load: give a Hugging Face id (owner/name) or a "
        "checkpoint folder under the data root"
    )


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
    """Models shared by every session of a served dashboard: each loads once, in a background thread, and a failure is remembered.

    Only models served_model allows are loaded; another is unavailable, with the reason.

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
                self._loads[config] = self._loader.submit(self._load_served, config)
            return self._loads[config]

    def _load_served(self, config: EmbedConfig) -> SharedModel:
        """The model of `config`, if served_model allows it (a workspace may hold a choice saved before the check)."""
        try:
            model = served_model(config.model)
        except ValueError as error:
            raise ModelUnavailableError(str(error)) from None
        return SharedModel(self._load(replace(config, model=model)), threading.Lock())

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
