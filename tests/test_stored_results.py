"""Stored analyses and projections that a power loss, a copy or a hand damaged: each is deleted with a one-line warning and computed again, in the library, on a page and on the command line."""

import warnings

import numpy as np
import pytest
import streamlit as st
from test_analysis_store import assert_same_analysis
from test_pages import assert_ran, metrics, run_page
from test_pipeline import clustered_embeddings

from core.__main__ import main
from core.analysis.pipeline import analyse
from core.io.parquet import write_embeddings
from core.maps.projection import (
    PROJECTIONS_FOLDER,
    ProjectionCache,
    ProjectionConfig,
    kept_projection,
    project,
    projection_key,
)
from core.paths import workspace_home
from core.prediction.config import PredictConfig
from core.records import TEST, TRAIN
from core.search.store import SearchStore
from core.session.workspace import DatasetEntry, Workspace

# What is left under a stored result's name: half a file (a write renamed before it reached the
# disk), nothing, noise, another dataset's result of other shapes, and of the same shapes.
DAMAGES = ("truncated", "empty", "garbage", "another dataset's file", "same shapes, other values")
MAP = ProjectionConfig(method="pca")


def embeddings():
    return clustered_embeddings(seed=3)


def same_shapes():
    return clustered_embeddings(seed=4)


def other_shapes():
    return clustered_embeddings(seed=5, n_classes=10)


def stored_bytes(folder) -> bytes:
    (path,) = folder.glob("*.npz")
    return path.read_bytes()


def damaged(kind: str, good: bytes, donor) -> bytes:
    """The bytes left under a stored result's name; `donor(embeddings)` stores another dataset's result and gives its bytes."""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return np.random.default_rng(0).bytes(len(good))
    given = donor(other_shapes() if kind == "another dataset's file" else same_shapes())
    assert given != good
    return given


def analysis_bytes(folder, embeddings_) -> bytes:
    analyse(embeddings_, PredictConfig(), SearchStore(folder))
    return stored_bytes(folder)


def projection_bytes(folder, embeddings_) -> bytes:
    train, test = embeddings_.subset(TRAIN).vectors, embeddings_.subset(TEST).vectors
    cache = ProjectionCache(folder)
    cache.put(projection_key(train, test, MAP), project(train, test, MAP))
    return stored_bytes(folder)


def one_line_warning(record, name: str) -> str:
    (warning,) = [w for w in record if name in str(w.message)]
    message = str(warning.message)
    assert "\n" not in message and message.endswith("computing again")
    return message


def no_warnings(function):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function()


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_stored_analysis_is_deleted_with_a_warning_and_searched_again(tmp_path, kind):
    folder, config = tmp_path / "analyses", PredictConfig()
    good = analysis_bytes(folder, embeddings())
    (path,) = folder.glob("*.npz")
    path.write_bytes(damaged(kind, good, lambda other: analysis_bytes(tmp_path / kind, other)))
    with pytest.warns(UserWarning) as record:
        again = analyse(embeddings(), config, SearchStore(folder))
    one_line_warning(record, f"stored search results {path.name}")
    assert_same_analysis(again, analyse(embeddings(), config))
    # The result was stored whole again under its name: the next analysis reads it, warning of nothing.
    assert_same_analysis(
        no_warnings(lambda: analyse(embeddings(), config, SearchStore(folder))), again
    )
    assert [p.name for p in folder.iterdir()] == [path.name]


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_stored_projection_is_deleted_with_a_warning_and_projected_again(
    tmp_path, workspace, kind
):
    train, test = embeddings().subset(TRAIN).vectors, embeddings().subset(TEST).vectors
    folder = workspace_home() / PROJECTIONS_FOLDER
    good = projection_bytes(folder, embeddings())
    (path,) = folder.glob("*.npz")
    path.write_bytes(damaged(kind, good, lambda other: projection_bytes(tmp_path / kind, other)))
    with pytest.warns(UserWarning) as record:
        again = kept_projection(train, test, MAP)
    one_line_warning(record, f"stored projection {path.name}")
    fresh = project(train, test, MAP)
    np.testing.assert_array_equal(again.train_xy, fresh.train_xy)
    np.testing.assert_array_equal(again.test_xy, fresh.test_xy)
    stored = no_warnings(lambda: kept_projection(train, test, MAP))
    np.testing.assert_array_equal(stored.test_xy, fresh.test_xy)
    assert [p.name for p in folder.iterdir()] == [path.name]


def test_a_folder_in_the_place_of_a_stored_result_is_computed_around_with_a_warning(tmp_path):
    folder = tmp_path / "analyses"
    analysis_bytes(folder, embeddings())
    (path,) = folder.glob("*.npz")
    path.unlink()
    path.mkdir()
    with pytest.warns(UserWarning) as record:
        again = analyse(embeddings(), PredictConfig(), SearchStore(folder))
    assert "cannot be opened (Is a directory)" in one_line_warning(record, "stored search results")
    assert any("search results not cached" in str(warning.message) for warning in record)
    assert_same_analysis(again, analyse(embeddings(), PredictConfig()))


@pytest.fixture
def clusters_workspace(tmp_path, fresh_server) -> str:
    """A workspace on a Parquet of labelled clusters, nothing cached in memory by another test."""
    path = tmp_path / "clusters.parquet"
    write_embeddings(path, embeddings())
    ws = Workspace("stored-results")
    ws.add_dataset(DatasetEntry("clusters", str(path), "parquet"))
    ws.set("dataset", "clusters")
    return ws.id


@pytest.mark.parametrize("kind", DAMAGES)
def test_the_evaluate_page_recomputes_a_damaged_stored_analysis_and_shows_the_true_map(
    tmp_path, clusters_workspace, kind
):
    first = run_page("evaluate", clusters_workspace)
    assert_ran(first)
    (path,) = (workspace_home() / "analyses").glob("*.npz")
    path.write_bytes(
        damaged(kind, path.read_bytes(), lambda other: analysis_bytes(tmp_path / kind, other))
    )
    st.cache_resource.clear()  # as a server restart forgets every analysis in memory
    with pytest.warns(UserWarning, match=f"stored search results {path.name}"):
        again = run_page("evaluate", clusters_workspace)
    assert_ran(again)
    assert metrics(again)["MAP@5"] == metrics(first)["MAP@5"]


def test_the_map_page_recomputes_a_damaged_analysis_and_projection_left_truncated(
    clusters_workspace,
):
    assert_ran(run_page("map", clusters_workspace, map_method="pca"))
    stored = [
        *(workspace_home() / "analyses").glob("*.npz"),
        *(workspace_home() / PROJECTIONS_FOLDER).glob("*.npz"),
    ]
    assert len(stored) == 2
    for path in stored:
        path.write_bytes(path.read_bytes()[:100])
    st.cache_resource.clear()
    with pytest.warns(UserWarning) as record:
        again = run_page("map", clusters_workspace, map_method="pca")
    assert_ran(again)
    for path in stored:
        one_line_warning(record, path.name)
        assert path.stat().st_size > 100


@pytest.mark.parametrize("kind", DAMAGES)
def test_report_on_the_command_line_recomputes_a_damaged_stored_map_with_one_note(
    tmp_path, workspace, capsys, kind
):
    parquet = tmp_path / "clusters.parquet"
    write_embeddings(parquet, embeddings())
    command = ["report", str(parquet), "--map-method", "pca", "--out", str(tmp_path / "r.html")]
    assert main(command) == 0
    (path,) = (workspace_home() / PROJECTIONS_FOLDER).glob("*.npz")
    path.write_bytes(
        damaged(kind, path.read_bytes(), lambda other: projection_bytes(tmp_path / kind, other))
    )
    capsys.readouterr()
    assert main(command) == 0
    err = capsys.readouterr().err
    (note,) = [line for line in err.splitlines() if path.name in line]
    assert note.startswith(f"note: stored projection {path.name} ") and "Traceback" not in err
    assert str(workspace_home()) not in note
    train, test = embeddings().subset(TRAIN).vectors, embeddings().subset(TEST).vectors
    stored = no_warnings(lambda: kept_projection(train, test, MAP))
    np.testing.assert_array_equal(stored.test_xy, project(train, test, MAP).test_xy)
