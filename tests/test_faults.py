"""Faults a real run meets: a killed embed run, a damaged cache, no model weights."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.embedding.baseline import BaselineEmbedder
from core.embedding.cache import CACHE_FILE_NAME, EmbeddingCache
from core.embedding.config import EmbedConfig
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import embed_dataset, load_embedder
from core.io.demo import write_demo_dataset
from core.io.layouts import load_dataset

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
# The child slows each batch's commit so the kill lands half-way; the code under test is unchanged.
SLOW_EMBED = """
import sys, time
import core.embedding.cache as cache
real = cache.EmbeddingCache.put_many
cache.EmbeddingCache.put_many = lambda self, model, vectors: (time.sleep(0.25), real(self, model, vectors))[1]
from core.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def cached_rows(home: Path) -> int:
    path = home / CACHE_FILE_NAME
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_embed_killed_half_way_resumes_without_recomputing(tmp_path, workspace):
    dataset_root = write_demo_dataset(tmp_path / "demo")
    env = {**os.environ, "RETRIEVAL_LAB_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    argv = [
        "embed",
        str(dataset_root),
        "--model",
        "baseline",
        "--batch-size",
        str(BATCH),
        "--out",
        str(tmp_path / "e.parquet"),
    ]
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_EMBED, *argv], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while (
            cached_rows(workspace) < 4 * BATCH
            and time.monotonic() < deadline
            and child.poll() is None
        ):
            time.sleep(0.05)
        assert child.poll() is None, "the run finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    committed = cached_rows(workspace)
    dataset = load_dataset(dataset_root)
    assert 4 * BATCH <= committed < len(dataset.items)
    assert committed % BATCH == 0, "only whole batches are committed"

    with EmbeddingCache() as cache:
        run = embed_dataset(dataset, BaselineEmbedder(), cache, BATCH)
        assert run.from_cache == committed
        assert run.computed == len(dataset.items) - committed
        assert cache.count(BaselineEmbedder.identity) == len(dataset.items)
    with sqlite3.connect(workspace / CACHE_FILE_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_damaged_cache_is_set_aside_and_rebuilt(tmp_path, workspace, image_file):
    workspace.mkdir(parents=True)
    (workspace / CACHE_FILE_NAME).write_bytes(b"this is not a database" * 100)
    image_file("train/red/a.png", colour=(220, 30, 30))
    image_file("train/blue/b.png", colour=(30, 30, 220))
    image_file("test/c.png", colour=(220, 40, 40))
    with pytest.warns(RuntimeWarning, match="(?i)corrupt|not a .*database|moved aside"):
        cache = EmbeddingCache()
    run = embed_dataset(load_dataset(tmp_path), BaselineEmbedder(), cache)
    assert run.computed == 3 and cache.count(BaselineEmbedder.identity) == 3
    assert list(workspace.glob(f"{CACHE_FILE_NAME}.corrupt-*")), (
        "the damaged file is kept for inspection"
    )


def test_missing_weights_fail_with_one_actionable_message():
    with pytest.raises(ModelUnavailableError) as raised:
        load_embedder(EmbedConfig(model="no-such-org/no-such-clip"))
    message = str(raised.value)
    assert "HF_HOME" in message and "baseline" in message and "\n" not in message.strip()


def wait_until_importing_libraries(child: subprocess.Popen) -> None:
    """Until the child maps its first compiled library from site-packages: the interpreter has started and runs our imports.

    A Ctrl-C before that lands in Python's own start-up (site, runpy), which no program can handle.
    """
    maps = Path(f"/proc/{child.pid}/maps")
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if "site-packages" in maps.read_text():
            return
        time.sleep(0.002)


# From the first library imports (numpy) to loading the model (2 s and later): the old CLI imported before its try.
@pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="needs /proc to see the child's imports"
)
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_of_start_up_prints_one_line_and_exits_130(
    delay, tiny_clip_dir, tmp_path, workspace
):
    dataset_root = write_demo_dataset(tmp_path / "demo")
    env = {**os.environ, "RETRIEVAL_LAB_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    argv = [
        "embed",
        str(dataset_root),
        "--model",
        str(tiny_clip_dir),
        "--batch-size",
        "1",
        "--out",
        str(tmp_path / "e.parquet"),
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "core", *argv],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_importing_libraries(child)
        time.sleep(delay)
        assert child.poll() is None, "the run finished before it could be interrupted"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert child.returncode == 130 and "Traceback" not in err
    assert lines == ["interrupted: finished batches are cached and will be reused"], err


@pytest.fixture
def sigint_handler_restored():
    """main leaves Ctrl-C ignored once interrupted, as it is about to leave; pytest's process goes on."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def ctrl_c_caught_by_a_library(then):
    """A command whose Ctrl-C lands inside a library that catches it, and then does `then()`."""

    def run(args) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the handler runs here, in the main thread
        except KeyboardInterrupt:
            return then()
        raise AssertionError("the SIGINT was not delivered")

    return run


@pytest.mark.usefixtures("sigint_handler_restored")
def test_a_ctrl_c_a_library_turns_into_its_own_error_ends_as_interrupted(monkeypatch, capsys):
    import core.__main__ as cli

    def initialization_failed():
        # what a compiled module interrupted in its init raises (seen in scipy's HiGHS wrapper)
        raise ImportError("initialization failed")

    monkeypatch.setattr(cli, "cmd_demo", ctrl_c_caught_by_a_library(initialization_failed))
    assert cli.main(["demo", "unused"]) == cli.EXIT_INTERRUPTED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["interrupted: finished batches are cached and will be reused"]


@pytest.mark.usefixtures("sigint_handler_restored")
def test_a_ctrl_c_a_library_swallows_stops_the_work_at_its_next_step(monkeypatch, capsys):
    import core.__main__ as cli

    steps = []

    def carry_on() -> int:
        bar = cli.ProgressBar("embedding")
        for done in range(1, 4):
            bar(done, 3)
            steps.append(done)
        return 0

    monkeypatch.setattr(cli, "cmd_demo", ctrl_c_caught_by_a_library(carry_on))
    assert cli.main(["demo", "unused"]) == cli.EXIT_INTERRUPTED
    assert steps == []
    assert "interrupted:" in capsys.readouterr().err
