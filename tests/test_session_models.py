"""core.session.models: models loaded once in a background thread, failures remembered, the baseline standing in."""

import threading

import numpy as np
import pytest
from input_files import StandInModel

from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.session.models import LOADING, READY, UNAVAILABLE, ModelShelf, choose_model, chosen_model
from core.session.workspace import Workspace


class FakeEmbedder(StandInModel):
    identity, dim = "fake", 2

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


@pytest.fixture
def data_root(workspace, tmp_path, monkeypatch):
    root = tmp_path / "data-root"
    (root / "models" / "clip").mkdir(parents=True)
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    return root


def test_a_served_dashboard_takes_model_folders_only_under_the_data_root_or_the_hub_cache(
    data_root, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--someone--clip" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "outside-clip").mkdir()
    ws = Workspace("served1")
    choose_model(ws, EmbedConfig(model="models/clip"))
    under_root = str((data_root / "models" / "clip").resolve())
    assert chosen_model(ws).model == under_root
    for allowed, saved_as in (
        (str(snapshot), str(snapshot.resolve())),
        ("someone/clip", "someone/clip"),
        (BASELINE_MODEL, BASELINE_MODEL),
    ):
        choose_model(ws, EmbedConfig(model=allowed))
        assert chosen_model(ws).model == saved_as
    choose_model(ws, EmbedConfig(model="models/clip"))
    refusals = set()
    for model in (
        str(tmp_path / "outside-clip"),
        str(tmp_path / "missing-clip"),
        "../outside-clip",
        "~",
        "/etc",
    ):
        with pytest.raises(ValueError, match="not a model this dashboard can load") as refusal:
            choose_model(ws, EmbedConfig(model=model))
        refusals.add(str(refusal.value).replace(repr(model), "<model>"))
    assert len(refusals) == 1, "a folder that exists and one that does not are refused alike"
    assert chosen_model(ws).model == under_root


def test_the_shelf_never_loads_a_model_folder_outside_the_data_root(data_root, tmp_path):
    """A workspace may hold a folder chosen before the check: the baseline stands in, with the reason."""
    loads = GatedLoads()
    loads.release.set()
    outside = tmp_path / "outside-clip"
    outside.mkdir()
    choice = ModelShelf(loads).choose(EmbedConfig(model=str(outside)))
    assert choice.config.model == BASELINE_MODEL
    assert "not a model this dashboard can load" in choice.unavailable
    assert str(outside) not in loads.loads


def test_the_embed_page_refuses_a_model_folder_outside_the_data_root(data_root, tmp_path):
    from test_pages import displayed, run_page

    (tmp_path / "outside-clip").mkdir()
    app = run_page("embed", "served2")
    app.selectbox[0].set_value(app.selectbox[0].options[-1]).run()
    app.text_input[0].set_value(str(tmp_path / "outside-clip")).run()
    next(button for button in app.button if button.label == "Embed").click().run()
    assert displayed(app.error[0].value).endswith("or a checkpoint folder under the data root")
    assert chosen_model(Workspace("served2")) == EmbedConfig()
