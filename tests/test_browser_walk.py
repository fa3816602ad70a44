"""Real-browser walk of every page with every kind of dataset: the sidebar and no exception on each, whether
the page is reached by its link, a reload or a deep link, and the background work started by a plain visit."""

import re
import time

import pytest
from playwright.sync_api import Page, expect
from test_app import HOSTILE_NAME, KINDS, write_dataset_workspaces
from test_hf_datasets import saved  # noqa: F401 (saved is a fixture: a save_to_disk folder)

from bench.browser import (
    ACTION_TIMEOUT_MS,
    PAGE_PATHS,
    RUN_TIMEOUT_MS,
    VIEWPORT,
    open_page,
    page_title,
    wait_for_run,
)
from bench.served import ServerFailed, serve

N_TEST = 400  # generated Parquet: test items, a quarter as many train classes of three images
DATASET_NAMES = {
    "demo": "demo: coloured shapes",
    "folder": HOSTILE_NAME,
    "parquet": f"{HOSTILE_NAME}.parquet",
    "huggingface": f"{HOSTILE_NAME} hf",
}


def served_with_datasets(tmp_path_factory, hf_folder):
    """A served app whose workspace home already holds a workspace per kind of dataset (test_app)."""
    home = tmp_path_factory.mktemp("walk-home")
    root = tmp_path_factory.mktemp("walk-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_LAB_HOME", str(home))
        patch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
        workspaces = write_dataset_workspaces(root, hf_folder, N_TEST)
    return home, root, workspaces


@pytest.fixture(scope="module")
def walk_server(tmp_path_factory, saved):  # noqa: F811 (saved is the imported fixture)
    home, root, workspaces = served_with_datasets(tmp_path_factory, saved)
    try:
        with serve(
            "app.py", home, home / "streamlit.log", {"RETRIEVAL_LAB_DATA_ROOT": str(root)}
        ) as url:
            yield url, workspaces
    except ServerFailed as failure:
        pytest.fail(str(failure))


@pytest.fixture
def tab(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def assert_sidebar_and_no_exception(tab: Page, title: str, kind: str, workspace_id: str) -> None:
    expect(page_title(tab)).to_have_text(title)
    lines = tab.get_by_test_id("stSidebar").get_by_test_id("stCaptionContainer")
    expect(lines).to_have_count(3, timeout=RUN_TIMEOUT_MS)
    expect(lines.nth(0)).to_have_text(f"Dataset: {DATASET_NAMES[kind]}")
    # The load was asked for: "(loading…)", then the baseline standing in for CLIP, offline.
    expect(lines.nth(1)).to_have_text(re.compile(r"^Model: .*(\(loading…\)|unavailable)"))
    expect(lines.nth(2)).to_contain_text(f"Workspace {workspace_id} — bookmark")
    exceptions = tab.get_by_test_id("stException")
    assert exceptions.count() == 0, f"{title} ({kind}): {exceptions.first.inner_text()}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_page_by_link_reload_and_deep_link_shows_the_sidebar_and_no_exception(
    tab, walk_server, kind
):
    url, workspaces = walk_server
    workspace_id = workspaces[kind]
    tab.goto(f"{url}/?ws={workspace_id}")
    wait_for_run(tab)
    for title in PAGE_PATHS:
        if title != "Data":
            open_page(tab, title)
        assert_sidebar_and_no_exception(tab, title, kind, workspace_id)
        tab.reload()
        wait_for_run(tab)
        assert_sidebar_and_no_exception(tab, title, kind, workspace_id)
    for title, path in PAGE_PATHS.items():
        tab.goto(f"{url}/{path}?ws={workspace_id}")
        wait_for_run(tab)
        assert_sidebar_and_no_exception(tab, title, kind, workspace_id)


def test_a_plain_visit_of_the_data_page_starts_the_background_work_on_a_fresh_server(
    tab,
    tmp_path_factory,
    saved,  # noqa: F811 (saved is the imported fixture)
):
    """The Data page of a Parquet ends its run early: the model still loads and the Parquet is analysed."""
    home, root, workspaces = served_with_datasets(tmp_path_factory, saved)
    with serve(
        "app.py", home, home / "streamlit.log", {"RETRIEVAL_LAB_DATA_ROOT": str(root)}
    ) as url:
        tab.goto(f"{url}/?ws={workspaces['parquet']}")  # the server's first request; no other page
        wait_for_run(tab)
        assert_sidebar_and_no_exception(tab, "Data", "parquet", workspaces["parquet"])
        deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
        while not list((home / "analyses").glob("*.npz")):
            assert time.monotonic() < deadline, "the Parquet's analysis was never started"
            time.sleep(0.5)
        model = tab.get_by_test_id("stSidebar").get_by_test_id("stCaptionContainer").nth(1)
        while "unavailable" not in model.inner_text():  # the load ran: CLIP is not here offline
            assert time.monotonic() < deadline, (
                f"the model's load never ended: {model.inner_text()}"
            )
            tab.reload()
            wait_for_run(tab)
