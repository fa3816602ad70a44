"""core.session.models: models loaded once in a background thread, failures remembered, the baseline standing in."""

import threading

import numpy as np
import pytest

from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.session.models import LOADING, READY, UNAVAILABLE, ModelShelf, choose_model, chosen_model
from core.session.workspace import Workspace


class FakeEmbedder:
    identity, dim, supports_text, draft_size = "fake", 2, False, None

    def embed_images(self, images):
        return np.zeros((len(images), self.dim), np.float32)


class GatedLoads:
    """A model loader that holds each load until released and counts the loads per model."""

    def __init__(self, missing=()):
        self.release = threading.Event()
        self.loads: dict[str, int] = {}
        self.missing = set(missing)

    def __call__(self, config: EmbedConfig):
        self.loads[config.model] = self.loads.get(config.model, 0) + 1
        self.release.wait(10)
        if config.model in self.missing:
            raise ModelUnavailableError(f"{config.model} has no weights here")
        return FakeEmbedder()


def test_a_model_loads_in_the_background_once_for_every_caller():
    loads = GatedLoads()
    shelf = ModelShelf(loads)
    config = EmbedConfig(model="clip-a")
    assert shelf.state(config) is None
    shelf.start(config)
    assert shelf.state(config) == LOADING  # start returned without waiting for the load
    loads.release.set()
    first, second = shelf.get(config), shelf.get(config)
    assert first is second and shelf.state(config) == READY
    assert loads.loads == {"clip-a": 1}


def test_an_unavailable_model_is_remembered_and_the_baseline_stands_in():
    loads = GatedLoads(missing={"clip-missing"})
    loads.release.set()
    shelf = ModelShelf(loads)
    wanted = EmbedConfig(model="clip-missing", precision="bf16")
    choice = shelf.choose(wanted)
    assert choice.config == EmbedConfig(model=BASELINE_MODEL, precision="fp32")
    assert "no weights here" in choice.unavailable
    assert shelf.state(wanted) == UNAVAILABLE
    with pytest.raises(ModelUnavailableError, match="no weights here"):
        shelf.get(wanted)
    assert loads.loads["clip-missing"] == 1, "a failed load is not retried on every rerun"
    assert shelf.choose(EmbedConfig(model="clip-b")).unavailable is None


def test_the_chosen_model_is_saved_in_the_workspace(workspace):
    ws = Workspace("models1")
    assert chosen_model(ws) == EmbedConfig()
    choose_model(ws, EmbedConfig(model=BASELINE_MODEL, batch_size=8))
    assert chosen_model(Workspace("models1")) == EmbedConfig(model=BASELINE_MODEL, batch_size=8)
    # saved by an older version, no longer valid
    ws.set("embed_config", {"model": "x", "precision": "fp8"})
    assert chosen_model(ws) == EmbedConfig()
