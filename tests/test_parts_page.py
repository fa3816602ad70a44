"""The Data page's Folder tab on a folder of part files that a run left unfinished."""

from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.io.parts import PartWriter, writing
from core.records import TEST, TRAIN, Embeddings
from core.session.workspace import DatasetEntry, Workspace
from pages import state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_server(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def some_vectors(count: int) -> Embeddings:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    return Embeddings(
        np.array([f"item{i}.jpg" for i in range(count)]),
        np.array([TRAIN, TEST] * (count // 2)),
        np.array([f"class{i % 2}" if i % 2 == 0 else None for i in range(count)], dtype=object),
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        "random vectors",
    )


def test_the_folder_tab_says_a_folder_left_by_a_stopped_run_is_incomplete_as_text(tmp_path):
    folder = tmp_path / "[vectors](https://example.com)"
    with pytest.raises(KeyboardInterrupt), writing(folder, expected=3000):
        with PartWriter(folder, "random vectors") as parts:
            parts.write(some_vectors(1234))
        raise KeyboardInterrupt  # the run stops before the end
    workspace = Workspace("stopped-run")
    workspace.add_dataset(DatasetEntry("stopped run", str(folder), "parquet"))
    workspace.set("dataset", "stopped run")

    app = AppTest.from_file(str(ROOT / "pages" / "data.py"), default_timeout=120)
    app.session_state[state.APP_RAN] = True
    app.query_params["ws"] = workspace.id
    app.run()

    assert not app.exception, [e.value for e in app.exception]
    [warning] = [element.value for element in app.warning]
    assert "is incomplete: 1,234 of 3,000 images embedded, its last run stopped before the end" in (
        warning.replace("\\", "")
    )
    assert (
        "](" not in warning.replace("\\]", "").replace("\\(", "") and str(tmp_path) not in warning
    )
