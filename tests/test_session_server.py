"""Tests for core.session.server and core.session.thresholds: what the dashboard keeps per server and per tab, without Streamlit."""

import math
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from test_pipeline import clustered_embeddings

from core.analysis.pipeline import analyse
from core.analysis.threshold_steps import on_grid, threshold_steps
from core.embedding.config import EmbedConfig
from core.io.parquet import write_embeddings
from core.prediction.config import PredictConfig
from core.session.server import ActiveAnalysis, Plan, Server
from core.session.thresholds import TabThreshold, save_threshold, saved_threshold
from core.session.vectors import DASHBOARD_DEFAULTS, Recipe, save_predict_config
from core.session.workspace import DatasetEntry, Workspace

SECONDS = 60


def clusters(seed: int, model: str = "test/model"):
    return replace(clustered_embeddings(seed=seed), model=model)


@pytest.fixture
def ws(workspace):
    return Workspace("server-tests")


def active(ws, entry, embeddings, config=PredictConfig()) -> ActiveAnalysis:
    from core.analysis.loading import LoadedEmbeddings

    return ActiveAnalysis(
        ws,
        entry,
        EmbedConfig(),
        LoadedEmbeddings(embeddings, []),
        analyse(embeddings, config),
        None,
    )


def test_a_tab_shows_the_saved_threshold_first_and_follows_another_tabs_change():
    tab = TabThreshold()
    assert tab.follow(0.5) is False
    assert (tab.shown, tab.synced, tab.origin) == (0.5, 0.5, 1), "the slider is moved to it"
    assert tab.follow(0.5) is False and tab.origin == 1, (
        "nothing changed: the slider keeps its place"
    )
    assert tab.keep(0.6) == 0.6 and (tab.shown, tab.synced, tab.origin) == (0.6, 0.6, 1)
    assert tab.follow(0.6) is False, "its own save is not a change made elsewhere"
    assert tab.follow(0.7) is True and (tab.shown, tab.origin) == (0.7, 2)
    assert tab.set(0.65) == 0.65 and tab.origin == 3, "a box moves the slider"


def test_what_flips_compares_each_run_with_the_one_before():
    tab = TabThreshold()
    tab.follow(0.5)
    assert tab.moved_from() == 0.5, "the first run compares with itself"
    tab.keep(0.6)
    assert tab.moved_from() == 0.5
    assert tab.moved_from() == 0.6, "a run that moved nothing compares with itself"


def test_the_saved_threshold_is_per_dataset_and_model_and_on_the_sliders_grid(ws):
    assert saved_threshold(ws, "d", "m", default=0.61234) == 0.612
    save_threshold(ws, "d", "m", 0.7)
    assert saved_threshold(ws, "d", "m", default=0.1) == 0.7
    assert saved_threshold(ws, "d", "other model", default=0.1) == 0.1
    assert saved_threshold(ws, "other", "m", default=0.1) == 0.1


def test_a_threshold_is_snapped_to_the_sliders_grid_and_ends():
    steps = threshold_steps(analyse(clusters(0)), 3)
    assert steps.snap(steps.low - 1) == steps.low and steps.snap(steps.high + 1) == steps.high
    middle = (steps.low + steps.high) / 2 + 0.00049
    assert steps.snap(middle) == on_grid(middle) and steps.snap(middle) in steps.thresholds
    assert on_grid(0.4999) == 0.5 and on_grid(0.4999, rounding=math.floor) == 0.499


def test_a_train_index_is_kept_per_vectors_not_per_main_model(ws):
    # Two ensembles of one dataset share the main model; their vectors differ, and so must their indexes.
    server = Server()
    entry = DatasetEntry("clusters", "/data/clusters", "folder")
    one = active(ws, entry, clusters(1, "ensemble(a×1 + b×1)"))
    other = active(ws, entry, clusters(4, "ensemble(a×1 + b×0.4)"))
    assert server.train_index(one) is server.train_index(one)
    assert server.train_index(other) is not server.train_index(one)
    query = other.analysis.train.vectors[:3]
    found = server.search_train(other, query)[0]
    assert (found.indices[:, 0] == np.arange(3)).all(), (
        "each train vector finds itself in its own index"
    )


def test_one_analysis_per_vectors_and_settings_whatever_model_a_parquet_is_opened_with(
    ws, tmp_path
):
    server = Server()
    path = tmp_path / "vectors.parquet"
    write_embeddings(path, clusters(2))
    entry = DatasetEntry("vectors", str(path), "parquet")
    loaded = server.vectors.of_recipe(entry, Recipe(((EmbedConfig(), 1.0),)))
    plan = Plan(entry, Recipe(((EmbedConfig(model="baseline"), 1.0),)), EmbedConfig(), None)
    first = server.analysis_job(plan, loaded, PredictConfig())
    other_model = Plan(entry, Recipe(((EmbedConfig(), 1.0),)), EmbedConfig(), None)
    again = server.analysis_job(other_model, loaded, PredictConfig())
    assert again is first, "the file's vectors do not change with the model chosen for queries"
    assert server.analysis_job(plan, loaded, PredictConfig(k=3)) is not first
    assert first.wait(SECONDS) and first.result.config == PredictConfig()


def test_the_server_loads_the_compiled_umap_only_once_no_analysis_runs(ws, monkeypatch):
    import core.maps.projection

    server, release, steps = Server(), threading.Event(), []

    def child_compiles():
        # a user opens an analysis while the child compiles
        steps.append("child")
        server.analyses.start("a user's analysis", lambda watch: release.wait(SECONDS))

    monkeypatch.setattr(core.maps.projection, "compile_in_child_process", child_compiles)
    monkeypatch.setattr(core.maps.projection, "warm_up", lambda: steps.append("server"))
    server.start_background_work(ws, after=lambda: None)
    deadline = time.monotonic() + SECONDS
    while "child" not in steps and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    assert steps == ["child"] and server.analyses.busy()
    release.set()
    while "server" not in steps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert steps == ["child", "server"]


def test_the_dashboard_starts_from_the_calibrated_threshold_until_settings_are_saved(ws):
    from core.session.vectors import saved_predict_config

    assert saved_predict_config(ws) == (DASHBOARD_DEFAULTS, []) and DASHBOARD_DEFAULTS.auto
    save_predict_config(ws, PredictConfig(contamination=0.2))
    assert saved_predict_config(ws)[0] == PredictConfig(contamination=0.2)


def test_background_work_waits_for_the_page_then_analyses_an_active_parquet(
    ws, tmp_path, monkeypatch
):
    import core.maps.projection
    import core.session.server

    warm_ups, finished = [], threading.Event()
    monkeypatch.setattr(
        core.maps.projection, "compile_in_child_process", lambda: warm_ups.append("child")
    )
    monkeypatch.setattr(
        core.maps.projection, "warm_up", lambda: (warm_ups.append("server"), finished.set())
    )
    loads_asked = []
    monkeypatch.setattr(
        core.session.server, "load_compiled", lambda: loads_asked.append("search kernels")
    )
    path = tmp_path / "vectors.parquet"
    write_embeddings(path, clusters(3))
    ws.add_dataset(DatasetEntry("vectors", str(path), "parquet"))
    ws.set("dataset", "vectors")
    server, page_ran = Server(), threading.Event()
    server.start_background_work(ws, after=lambda: page_ran.wait(SECONDS))
    assert not server.analyses.busy() and server.models.state(EmbedConfig()) is None, (
        "nothing starts before the page has run"
    )
    page_ran.set()
    plan = server.plan(ws)
    loaded = server.vectors.of_recipe(plan.entry, plan.recipe)
    job = server.analysis_job(plan, loaded, DASHBOARD_DEFAULTS)
    assert job.wait(SECONDS) and job.result.config == DASHBOARD_DEFAULTS
    # numba holds the GIL while it compiles: a child compiles, the server only loads what it kept
    assert finished.wait(SECONDS) and warm_ups == ["child", "server"]
    # the search's compiled steps, for searches of every size: asked for by the server itself
    assert loads_asked == ["search kernels"]
