"""core.session.vectors: the bounded store of loaded vectors, ensemble recipes and searched weights, predict settings."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pytest

from core.analysis.loading import LoadedEmbeddings
from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import load_embedder
from core.io.demo import write_demo_dataset
from core.io.parquet import read_embeddings
from core.prediction.config import PredictConfig
from core.prediction.placement import MAX_K
from core.session.models import ModelShelf
from core.session.vectors import (
    DASHBOARD_DEFAULTS,
    DatasetVectors,
    EnsembleMember,
    Recipe,
    VectorStore,
    ensemble_recipe,
    export_embeddings,
    predict_config,
    reweighted,
    save_ensemble,
    save_predict_config,
    saved_ensemble,
    saved_predict_config,
)
from core.session.workspace import DatasetEntry, Workspace

MAIN = EmbedConfig(model=BASELINE_MODEL)


def loaded(tag: str) -> LoadedEmbeddings:
    return LoadedEmbeddings(embeddings=tag, rejected=[])


def test_the_store_keeps_at_most_its_capacity_dropping_the_least_recently_used():
    store = VectorStore(capacity=2)
    store.get("a", lambda: loaded("a"))
    store.get("b", lambda: loaded("b"))
    store.get("a", lambda: pytest.fail("a is stored"))  # a is now the most recently used
    store.get("c", lambda: loaded("c"))
    assert "a" in store and "c" in store and "b" not in store
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        VectorStore(capacity=0)


def test_the_store_builds_a_key_once_when_many_ask_at_once():
    store, builds = VectorStore(), []

    def build():
        builds.append(1)
        time.sleep(0.05)
        return loaded("x")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.get("x", build), range(4)))
    assert len(builds) == 1 and all(result is results[0] for result in results)


def test_a_failed_build_is_tried_again_next_time():
    store = VectorStore()
    with pytest.raises(OSError):
        store.get("x", lambda: (_ for _ in ()).throw(OSError("disk")))
    assert store.get("x", lambda: loaded("x")).embeddings == "x"


class Shelf(ModelShelf):
    def __init__(self, missing=()):
        def load(config):
            if config.model in missing:
                raise ModelUnavailableError(f"{config.model} cannot load")
            return load_embedder(MAIN)

        super().__init__(load)


def test_a_recipe_leaves_out_members_that_cannot_load_and_keeps_the_order_of_the_rest():
    members = [EnsembleMember("gone", 1.0), EnsembleMember("m1", 0.5), EnsembleMember("m2", 0.25)]
    recipe = ensemble_recipe(members, MAIN, Shelf(missing={"gone"}))
    assert [(config.model, weight) for config, weight in recipe.parts] == [
        (BASELINE_MODEL, 1.0),
        ("m1", 0.5),
        ("m2", 0.25),
    ]
    assert recipe.left_out == ("gone",) and recipe.is_ensemble


def test_searched_weights_land_on_the_members_that_were_searched():
    members = [EnsembleMember("gone", 1.0), EnsembleMember("m1", 0.5), EnsembleMember("m2", 0.25)]
    recipe = Recipe(
        ((MAIN, 1.0), (EmbedConfig(model="m1"), 0.5), (EmbedConfig(model="m2"), 0.25)), ("gone",)
    )
    assert reweighted(members, recipe, [2.0, 1.0, 3.0]) == [
        EnsembleMember("gone", 1.0),
        EnsembleMember("m1", 0.5),
        EnsembleMember("m2", 1.5),
    ]
    with pytest.raises(ValueError, match="left the main model out"):
        reweighted(members, recipe, [0.0, 1.0, 1.0])


def test_ensemble_and_predict_settings_round_trip_through_the_workspace(workspace):
    ws = Workspace("vectors1")
    ws.set("ensemble", [{"model": "m1", "weight": "0.5"}, {"model": "broken"}, "junk"])
    assert saved_ensemble(ws) == [EnsembleMember("m1", 0.5)]
    save_ensemble(ws, [EnsembleMember("m2", 2.0)])
    assert saved_ensemble(ws) == [EnsembleMember("m2", 2.0)]
    assert predict_config(ws) == DASHBOARD_DEFAULTS
    save_predict_config(ws, PredictConfig(k=3, score_mode="mean"))
    assert predict_config(Workspace("vectors1")) == PredictConfig(k=3, score_mode="mean")


@pytest.mark.parametrize("saved_k, used_k", [(100_000, MAX_K), (MAX_K + 1, MAX_K), (0, 1)])
def test_a_saved_k_out_of_range_is_clamped_with_a_note_and_the_other_settings_kept(
    workspace, saved_k, used_k
):
    ws = Workspace("vectors-k")
    kept = {"score_mode": "mean", "placement": "first"}
    ws.set("predict_config", asdict(PredictConfig(**kept)) | {"k": saved_k})
    config, notes = saved_predict_config(ws)
    assert config == PredictConfig(k=used_k, **kept) == predict_config(ws)
    (note,) = notes
    assert f"k={saved_k} was saved" in note and f"k={used_k} is used" in note


@pytest.mark.parametrize("saved", [{"k": "five"}, {"placement": "last"}, {"no_such": 1}, ["junk"]])
def test_saved_settings_that_cannot_be_used_give_the_defaults_with_a_note(workspace, saved):
    ws = Workspace("vectors-junk")
    ws.set("predict_config", saved)
    config, notes = saved_predict_config(ws)
    assert config == DASHBOARD_DEFAULTS
    assert len(notes) == 1 and "the defaults are used" in notes[0]


def test_dataset_vectors_embed_once_combine_an_ensemble_and_export(workspace, tmp_path):
    source = write_demo_dataset(
        tmp_path, n_classes=4, test_per_class=2, n_distractor_classes=1, distractor_per_class=2
    )
    entry = DatasetEntry("small", str(source), "folder")
    vectors = DatasetVectors(Shelf(), cache=None)
    single = vectors.of(entry, MAIN)
    assert single.computed == len(single.embeddings.ids) > 0
    assert vectors.of_recipe(entry, Recipe(((MAIN, 1.0),))) is single
    twice = vectors.of_recipe(
        entry, Recipe(((MAIN, 1.0), (EmbedConfig(model=BASELINE_MODEL, batch_size=4), 1.0)))
    )
    # same dimensions: summed, not concatenated
    assert twice.embeddings.dim == single.embeddings.dim
    # a model plus itself
    np.testing.assert_allclose(twice.embeddings.vectors, single.embeddings.vectors, atol=1e-5)
    path = export_embeddings(Workspace("vectors2"), "small/../x", single.embeddings)
    assert path.parent.parent == Workspace("vectors2").files
    assert list(read_embeddings(path).ids) == list(single.embeddings.ids)
    parquet = DatasetEntry("vectors", str(path), "parquet")
    assert list(vectors.of(parquet, EmbedConfig(model="never-loaded")).embeddings.ids) == list(
        single.embeddings.ids
    )
