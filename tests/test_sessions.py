"""Sessions: users never see each other's state (AppTest and real browsers), the shared model runs one
call at a time, the server refuses uploads without its XSRF token, and N concurrent sessions move
their sliders without errors.

The load test's size comes from RETRIEVAL_LAB_LOAD_SESSIONS (default 3) and RETRIEVAL_LAB_LOAD_STEPS
(default 5); its figures (median and p95 time from a key press to the new threshold on screen) are
printed even without -s.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from input_files import StandInModel
from PIL import Image
from playwright.sync_api import expect
from test_pages import (
    assert_ran,
    run_page,
    set_threshold_by_contamination,
    slider_metrics,
)

import core.session.server
from bench.browser import (
    ACTION_TIMEOUT_MS,
    RUN_TIMEOUT_MS,
    VIEWPORT,
    concurrent_slider_presses,
    count_shown,
    metric,
    open_page,
    threshold_slider,
    wait_for_rest,
    wait_for_run,
)
from core.embedding.config import EmbedConfig
from core.io.demo import write_demo_dataset, write_digits_dataset
from core.io.layouts import load_dataset
from core.records import TEST
from core.session.queries import embed_images, embed_texts
from core.session.workspace import DatasetEntry, Workspace
from pages import state

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

LOAD_SESSIONS = int(os.environ.get("RETRIEVAL_LAB_LOAD_SESSIONS", "3"))
LOAD_STEPS = int(os.environ.get("RETRIEVAL_LAB_LOAD_STEPS", "5"))
# The whole load test, however large, ends by then: first runs of every session, then each step.
LOAD_TIMEOUT_S = RUN_TIMEOUT_MS / 1000 + LOAD_SESSIONS * LOAD_STEPS * ACTION_TIMEOUT_MS / 1000


def count_test_images(dataset_root: Path) -> int:
    return len(load_dataset(dataset_root).split(TEST))


# --------------------------------------------------------------------------- AppTest sessions


def thresholds_saved(home: Path) -> dict[str, list[str]]:
    """Workspace id → the keys of the thresholds it saved, straight from the settings table."""
    with sqlite3.connect(home / "workspaces.sqlite") as db:
        rows = db.execute(
            "SELECT workspace, key FROM settings WHERE key LIKE 'threshold:%'"
        ).fetchall()
    saved: dict[str, list[str]] = {}
    for workspace_id, key in rows:
        saved.setdefault(workspace_id, []).append(key)
    return saved


def test_two_apptest_sessions_at_once_keep_their_own_dataset_and_threshold(workspace, tmp_path):
    small = write_demo_dataset(
        tmp_path,
        seed=1,
        n_classes=4,
        test_per_class=4,
        n_distractor_classes=2,
        distractor_per_class=4,
    )
    other = Workspace("apptest-small")
    other.add_dataset(DatasetEntry("small shapes", str(small), "folder"))
    other.set("dataset", "small shapes")
    demo_tests = count_test_images(write_demo_dataset(tmp_path / "expected"))

    # Both sessions run at the same time, each setting its own threshold several times.
    def session(workspace_id: str, shares: list[float]):
        app = run_page("distractors", workspace_id)
        for share in shares:
            set_threshold_by_contamination(app, share)
            assert_ran(app)
        return app

    with ThreadPoolExecutor(2) as pool:
        demo_run = pool.submit(session, "apptest-demo", [0.9, 0.2, 0.8])
        small_run = pool.submit(session, "apptest-small", [0.1, 0.7, 0.3])
        demo, small_app = demo_run.result(), small_run.result()

    shown = {"apptest-demo": slider_metrics(demo), "apptest-small": slider_metrics(small_app)}
    assert (
        int(shown["apptest-demo"]["Flagged as distractors"]) + int(shown["apptest-demo"]["Kept"])
        == demo_tests
    )
    assert int(shown["apptest-small"]["Flagged as distractors"]) + int(
        shown["apptest-small"]["Kept"]
    ) == count_test_images(small)
    assert shown["apptest-demo"]["Threshold"] != shown["apptest-small"]["Threshold"]
    for app, own, foreign in (
        (demo, "apptest-demo", "apptest-small"),
        (small_app, "apptest-small", "apptest-demo"),
    ):
        keys = [str(key) for key in app.session_state]
        assert any(own in key for key in keys) and not any(foreign in key for key in keys)
    saved = thresholds_saved(workspace)
    assert set(saved) == {"apptest-demo", "apptest-small"}
    assert all(key.startswith("threshold:demo: coloured shapes:") for key in saved["apptest-demo"])
    assert all(key.startswith("threshold:small shapes:") for key in saved["apptest-small"])

    for workspace_id in ("apptest-demo", "apptest-small"):  # a reload of each
        reopened = run_page("distractors", workspace_id)
        assert_ran(reopened)
        assert slider_metrics(reopened)["Threshold"] == shown[workspace_id]["Threshold"]


class OverlapRecorder(StandInModel):
    """A stand-in model that records how many of its calls run at the same moment."""

    identity = "overlap recorder"
    dim = 4
    supports_text = True

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.running = self.most_at_once = self.calls = 0

    def _run(self, rows: int) -> np.ndarray:
        with self._guard:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.05)  # long enough for an unlocked second caller to overlap
        with self._guard:
            self.running -= 1
        return np.tile(np.eye(self.dim, dtype=np.float32)[0], (rows, 1))

    def embed_images(self, images) -> np.ndarray:
        return self._run(len(images))

    def embed_texts(self, texts) -> np.ndarray:
        return self._run(len(texts))


class SilentArea:
    """What st.empty() gives _embed_with_progress, without a page to draw on."""

    def progress(self, *args, **kwargs):
        return self

    def empty(self) -> None:
        pass


def test_the_shared_model_serves_one_session_at_a_time(workspace, tmp_path, monkeypatch):
    recorder = OverlapRecorder()
    monkeypatch.setattr(core.session.server, "load_embedder", lambda config: recorder)
    config = EmbedConfig(model="overlap-recorder", batch_size=4)
    shared = state.server().models.get(config)
    assert shared is state.server().models.get(config), "one model per server, not one per session"
    entries = [
        DatasetEntry(
            f"tiny {seed}",
            str(
                write_demo_dataset(
                    tmp_path / str(seed),
                    seed=seed,
                    n_classes=2,
                    test_per_class=2,
                    n_distractor_classes=1,
                    distractor_per_class=2,
                )
            ),
            "folder",
        )
        for seed in range(2)
    ]
    image = Image.new("RGB", (8, 8))
    jobs = [
        *(lambda: embed_images(shared, [image, image]) for _ in range(4)),
        *(
            lambda n=n: embed_texts(
                shared, [f"a photo of thing {n}"], state.server().embedding_cache
            )
            for n in range(4)
        ),
        *(lambda e=e: state.embeddings(e, config, SilentArea()) for e in entries),
    ]
    start = threading.Barrier(len(jobs))

    def together(job):
        start.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(together, job) for job in jobs]:
            future.result()
    assert recorder.calls >= len(jobs)
    assert recorder.most_at_once == 1


# --------------------------------------------------------------------------- real browsers


def test_the_server_refuses_an_upload_without_its_xsrf_token(app_url):
    # With XSRF protection off the same request gets 400 (unknown session): 403 is the token check.
    request = urllib.request.Request(
        f"{app_url}/_stcore/upload_file/any-session/any-file", data=b"x", method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403


def _sidebar(tab):
    return tab.get_by_test_id("stSidebar")


def _counted_tests(tab) -> int:
    return count_shown(metric(tab, "Flagged as distractors").inner_text()) + count_shown(
        metric(tab, "Kept").inner_text()
    )


def test_two_browser_sessions_at_once_never_see_each_others_state(browser, app_url, tmp_path):
    expected_tests = {
        "digits (scikit-learn)": count_test_images(write_digits_dataset(tmp_path)),
        "demo: coloured shapes": count_test_images(write_demo_dataset(tmp_path)),
    }
    contexts = [
        browser.new_context(viewport=VIEWPORT) for _ in expected_tests
    ]  # separate cookies and storage
    try:
        tabs = {}
        for (dataset, context), workspace_id in zip(
            zip(expected_tests, contexts), ("browser-digits", "browser-demo")
        ):
            tab = context.new_page()
            tab.set_default_timeout(ACTION_TIMEOUT_MS)
            tab.goto(f"{app_url}/?ws={workspace_id}")
            tabs[dataset] = tab
        for tab in tabs.values():
            wait_for_run(tab)
        digits = tabs["digits (scikit-learn)"]
        digits.get_by_test_id("stMain").get_by_test_id("stSelectbox").first.click()
        digits.get_by_role("option", name="digits (scikit-learn)").click()
        # The choice reruns the script; wait for its result, not for the quiet moment before it starts.
        expect(_sidebar(digits)).to_contain_text(
            "Dataset: digits (scikit-learn)", timeout=RUN_TIMEOUT_MS
        )
        wait_for_run(digits)
        for tab in tabs.values():
            open_page(tab, "Distractors")

        for tab in tabs.values():
            threshold_slider(tab).focus()
        for _ in range(3):  # both sessions move at once, in opposite directions
            for key, tab in zip(("ArrowRight", "ArrowLeft"), tabs.values()):
                threshold_slider(tab).press(key)
            for tab in tabs.values():
                shown = f"{float(threshold_slider(tab).input_value()):.3f}"
                expect(metric(tab, "Threshold")).to_have_text(shown, timeout=RUN_TIMEOUT_MS)
        chosen = {dataset: metric(tab, "Threshold").inner_text() for dataset, tab in tabs.items()}
        for dataset, tab in tabs.items():  # the server has the threshold once the slider has rested
            wait_for_rest(tab, chosen[dataset])
        assert len(set(chosen.values())) == 2

        for dataset, tab in tabs.items():
            workspace_id = parse_qs(urlparse(tab.url).query)["ws"][0]
            tab.reload()  # a new server session on the same workspace
            wait_for_run(tab)
            expect(metric(tab, "Threshold")).to_have_text(chosen[dataset], timeout=RUN_TIMEOUT_MS)
            # app.py writes the sidebar's captions after the page's run.
            expect(_sidebar(tab)).to_contain_text(f"Dataset: {dataset}", timeout=RUN_TIMEOUT_MS)
            expect(_sidebar(tab)).to_contain_text(
                f"Workspace {workspace_id}", timeout=RUN_TIMEOUT_MS
            )
            assert _counted_tests(tab) == expected_tests[dataset]
            assert tab.get_by_test_id("stException").count() == 0
    finally:
        for context in contexts:
            context.close()


def test_concurrent_sessions_move_their_sliders_without_errors(browser, app_url, capsys):
    # browser: the same skip-or-fail rule for a missing chromium; the load runs its own async one,
    # in a thread of its own because the sync browser holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        run = secrets.token_hex(3)
        workspaces = [f"load-{run}-{n}" for n in range(LOAD_SESSIONS)]
        latencies = pool.submit(
            asyncio.run, concurrent_slider_presses(app_url, workspaces, LOAD_STEPS)
        ).result(timeout=LOAD_TIMEOUT_S)
    assert len(latencies) == LOAD_SESSIONS * LOAD_STEPS
    milliseconds = sorted(1000 * value for value in latencies)
    with capsys.disabled():
        print(
            f"\nload test: {LOAD_SESSIONS} concurrent sessions x {LOAD_STEPS} slider steps, 0 errors; "
            f"key press to new threshold on screen: median {statistics.median(milliseconds):.0f} ms, "
            f"p95 {np.percentile(milliseconds, 95):.0f} ms, max {milliseconds[-1]:.0f} ms"
        )
