"""AppTest runs of app.py: the sidebar and the background work on every page, whatever the page does and the dataset is."""

import shutil
import threading
from pathlib import Path

import pytest
import streamlit as st

# Imported whole before any background model load imports it: `datasets` looks up transformers' classes
# whenever transformers is in sys.modules, and one half imported by a load in another thread lacks them.
import transformers  # noqa: F401
from streamlit.testing.v1 import AppTest
from test_hf_datasets import saved  # noqa: F401 (saved is a fixture: a save_to_disk folder)
from test_hostile_text import PAGES
from test_pages import SECONDS, displayed, eventually, started_analysis

import core.maps.projection
from bench.fixtures import retrieval_embeddings
from core.io.demo import write_demo_dataset
from core.io.hf_datasets import HfSelection
from core.io.parquet import write_embeddings
from core.paths import workspace_home
from core.session.datasets import WorkspaceDatasets, builtin_datasets
from core.session.models import chosen_model
from core.session.workspace import Workspace
from pages import state

pytestmark = pytest.mark.usefixtures("fresh_server")

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("demo", "folder", "parquet", "huggingface")
# Folder names become dataset names: Markdown in them must reach the sidebar as text.
HOSTILE_NAME = "shapes *x* [link](example.invalid) :red[y]"


def write_dataset_workspaces(root: Path, hf_folder: Path, n_test: int = 120) -> dict[str, str]:
    """A workspace per kind of dataset, each with it active: the built-in demo, and under the data `root` an image
    folder, an embeddings Parquet of `n_test` test items and a copy of the save_to_disk `hf_folder`.

    Written in the workspace home and data root the environment names (RETRIEVAL_LAB_HOME, RETRIEVAL_LAB_DATA_ROOT)."""
    write_demo_dataset(root).rename(root / HOSTILE_NAME)
    write_embeddings(
        root / f"{HOSTILE_NAME}.parquet", retrieval_embeddings(n_test, max(2, n_test // 4))
    )
    shutil.copytree(hf_folder, root / f"{HOSTILE_NAME} hf")
    added = {
        "folder": lambda datasets: datasets.add_folder(HOSTILE_NAME),
        "parquet": lambda datasets: datasets.add_folder(f"{HOSTILE_NAME}.parquet"),
        "huggingface": lambda datasets: datasets.add_hugging_face(
            f"{HOSTILE_NAME} hf", HfSelection()
        ),
    }
    ids = {}
    for kind in KINDS:
        ws = Workspace(f"app-{kind}")
        datasets = WorkspaceDatasets(ws, builtin_datasets(workspace_home() / "builtin"))
        if kind in added:
            datasets.choose(added[kind](datasets).name)
        ids[kind] = ws.id
    return ids


@pytest.fixture
def dataset_workspaces(tmp_path, monkeypatch, saved) -> dict[str, str]:  # noqa: F811 (saved is the imported fixture)
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(tmp_path / "data-root"))
    return write_dataset_workspaces(tmp_path / "data-root", saved)


def sidebar_lines(app: AppTest) -> list[str]:
    return [displayed(caption.value).replace("**", "") for caption in app.sidebar.caption]


def run_app_on(page: str, workspace_id: str) -> AppTest:
    """app.py run as a browser's first request for `page` (a deep link), which app.py's navigation opens.

    A fresh AppTest each time: AppTest runs a page file on its own, without app.py, once its first run
    has ended, whether asked to switch pages or to run again."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=SECONDS)
    app.query_params["ws"] = workspace_id
    app.query_params[state.OPEN_PAGE] = page
    app.session_state["map_method"] = "pca"
    return app.run()


@pytest.mark.parametrize("kind", KINDS)
def test_every_page_shows_the_sidebar_and_starts_the_background_work(
    kind, dataset_workspaces, monkeypatch
):
    # Compiling UMAP is part of the background work; what it compiles is not this test's business.
    monkeypatch.setattr(core.maps.projection, "warm_up", lambda *args, **kwargs: None)
    monkeypatch.setattr(core.maps.projection, "compile_in_child_process", lambda: True)
    ws = Workspace(dataset_workspaces[kind])
    entry = state.server().datasets(ws).active()
    for page in PAGES:
        # As on a fresh server: only this page's run can have started the model's load.
        st.cache_resource.clear()
        app = run_app_on(page, ws.id)
        assert not app.exception, (page, [e.value for e in app.exception])
        assert app.title, f"{page} shows no title"
        lines = sidebar_lines(app)
        assert len(lines) == 3, (page, lines)
        dataset, model, workspace = lines
        assert dataset == f"Dataset: {entry.name}", page
        assert model.startswith("Model: ") and ("loading" in model or "unavailable" in model), (
            page,
            model,
        )
        assert workspace.startswith(f"Workspace {ws.id} — bookmark"), page
        assert eventually(lambda: state.server().models.state(chosen_model(ws))), page
        if kind == "parquet":
            assert started_analysis(ws) is not None, page
        for thread in threading.enumerate():  # its last steps, before the next page's fresh server
            if thread.name == "background-work":
                thread.join(SECONDS)
