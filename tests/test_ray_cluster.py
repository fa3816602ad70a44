"""embed --engine ray --address onto a real multi-node Ray cluster on 127.0.0.1: the local vectors, resuming, a lost node, and one-line errors for clusters that cannot be joined."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.ray_cluster import LoopbackCluster
from core.embedding.config import EmbedConfig
from core.embedding.ray_engine import JOIN_SECONDS
from core.embedding.runner import embed_dataset, load_embedder
from core.io.layouts import load_dataset
from core.io.parquet import read_embeddings_checked

REPO = Path(__file__).resolve().parents[1]
HALF = 300  # labelled train images; as many unlabelled test images
ROWS_PER_PART = 32
# A command on a loaded two-core machine: Python, the imports, Ray's actors starting on two nodes.
COMMAND_SECONDS = 600


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, one CPU each, with token authentication, for the module's tests."""
    with LoopbackCluster(workers=1, cpus=1) as running:
        yield running


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The project's main shape, small: labelled train images over 30 classes and unlabelled test images, 8×8 each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cluster-images")
    rng = np.random.default_rng(2)
    for index in range(2 * HALF):
        folder = root / (f"train/c{index % 30}" if index < HALF else "test")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            folder / f"{index:04d}.png"
        )
    return root


def command(source: Path, out: Path, *options: str, model: str = "baseline") -> list[str]:
    return [
        sys.executable,
        "-m",
        "core",
        "embed",
        str(source),
        "--model",
        model,
        "--engine",
        "ray",
        "--rows-per-part",
        str(ROWS_PER_PART),
        "--out",
        str(out),
        *options,
    ]


def environment(base: dict[str, str], home: Path) -> dict[str, str]:
    """`base` with this checkout importable, run from outside it: the workers must get `core` from the command."""
    return {**base, "PYTHONPATH": str(REPO), "RETRIEVAL_LAB_HOME": str(home)}


def run(
    argv: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_SECONDS
    )
    return done, time.monotonic() - started


def start(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_parts(out: Path, count: int, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + COMMAND_SECONDS
    while len(list(out.glob("part-*.parquet"))) < count:
        assert child.poll() is None, f"the command ended first: {child.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"fewer than {count} parts in {COMMAND_SECONDS} s"
        time.sleep(0.05)


def part_ids(out: Path) -> list[str]:
    """Every id of every part, repeats included."""
    return [
        name
        for part in sorted(out.glob("part-*.parquet"))
        for name in pq.read_table(part, columns=["id"]).column("id").to_pylist()
    ]


def assert_local_vectors(out: Path, source: Path, config: EmbedConfig) -> None:
    """`out` holds every item of `source` once, with its label and the local path's vector."""
    written, dropped = read_embeddings_checked(out)
    local = embed_dataset(load_dataset(source), load_embedder(config)).embeddings
    assert not dropped and sorted(part_ids(out)) == sorted(local.ids)
    rows = dict(zip(written.ids, zip(written.labels, written.vectors)))
    assert [rows[name][0] for name in local.ids] == list(local.labels)
    cosines = [float(rows[name][1] @ vector) for name, vector in zip(local.ids, local.vectors)]
    assert min(cosines) >= 0.9999


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def startup_seconds(tmp_path: Path) -> float:
    """How long the command's Python and imports take here, before it does anything."""
    _, seconds = run(
        [sys.executable, "-c", "import ray, core.__main__, core.embedding.ray_engine"],
        environment(dict(os.environ), tmp_path / "home"),
        tmp_path,
    )
    return seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_on_two_nodes_writes_the_local_vectors_with_core_shipped_to_the_workers(
    cluster, images, tiny_clip_dir, tmp_path
):
    out = tmp_path / "vectors"
    options = ["--precision", "fp32", "--runtime", "torch", "--batch-size", "16"]
    options += ["--address", cluster.address]
    done, _ = run(
        command(images, out, *options, model=str(tiny_clip_dir)),
        environment(cluster.driver_env(), tmp_path / "home"),
        tmp_path,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith(f"wrote {2 * HALF} vectors")
    assert_local_vectors(
        out,
        images,
        EmbedConfig(model=str(tiny_clip_dir), precision="fp32", runtime="torch", batch_size=16),
    )
    # The nodes run outside this checkout, without it on their path: they import what the command shipped.
    shipped = cluster.folder.glob("ray/session_*/runtime_resources/py_modules_files/*/core")
    assert any((package / "embedding" / "ray_engine.py").is_file() for package in shipped)


def test_a_command_interrupted_then_killed_resumes_where_its_parts_end(cluster, images, tmp_path):
    out = tmp_path / "vectors"
    argv = command(images, out, "--batch-size", "8", "--address", cluster.address)
    env = environment(cluster.driver_env(), tmp_path / "home")

    interrupted = start(argv, env, tmp_path)
    wait_for_parts(out, 3, interrupted)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=COMMAND_SECONDS)
    assert interrupted.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: the parts written to {out} so far are kept; the same command resumes from them"
    )

    killed = start(argv, env, tmp_path)
    kept = len(list(out.glob("part-*.parquet")))
    wait_for_parts(out, kept + 2, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=COMMAND_SECONDS)
    before = set(part_ids(out))

    done, _ = run(argv, env, tmp_path)

    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.strip()
        .splitlines()[-1]
        .endswith(f"; {len(before)} already there, {2 * HALF} in all")
    )
    assert 0 < len(before) < 2 * HALF
    assert_local_vectors(out, images, EmbedConfig(model="baseline"))


def test_a_worker_node_lost_mid_run_costs_its_batches_again_and_none_twice(
    cluster, images, tmp_path
):
    out = tmp_path / "vectors"
    argv = command(images, out, "--batch-size", "8", "--address", cluster.address)
    running = start(argv, environment(cluster.driver_env(), tmp_path / "home"), tmp_path)
    wait_for_parts(out, 3, running)

    cluster.remove_worker()
    stdout, stderr = running.communicate(timeout=COMMAND_SECONDS)

    assert running.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1].startswith(f"wrote {2 * HALF} vectors")
    assert_local_vectors(out, images, EmbedConfig(model="baseline"))


def test_a_cluster_that_cannot_be_joined_is_one_line_saying_what_to_do_within_seconds(
    cluster, images, tmp_path
):
    started = startup_seconds(tmp_path)
    without_token = {
        name: value
        for name, value in cluster.driver_env().items()
        if not name.startswith("RAY_AUTH")
    }
    wrong_token = tmp_path / "wrong-token"
    wrong_token.write_text("0" * 64)
    cases = {
        "no token": (without_token, cluster.address, "wants a token .* set RAY_AUTH_MODE=token"),
        "another token": (
            {**cluster.driver_env(), "RAY_AUTH_TOKEN_PATH": str(wrong_token)},
            cluster.address,
            "refused this machine's token.*ray get-auth-token",
        ),
        "no head": (
            cluster.driver_env(),
            f"127.0.0.1:{free_port()}",
            r"cannot reach .* \(nothing listens on that port\): start its head there",
        ),
    }
    for case, (env, address, says) in cases.items():
        out = tmp_path / case.replace(" ", "-")
        done, seconds = run(
            command(images, out, "--address", address),
            environment(env, tmp_path / "home"),
            tmp_path,
        )
        assert re.search(says, one_error_line(done)), (case, done.stderr)
        assert seconds - started <= 2 * JOIN_SECONDS, (case, seconds, started)
        assert not list(out.glob("part-*"))


def test_a_version_mismatch_and_then_a_stopped_head_are_one_line_each(images, tmp_path):
    started = startup_seconds(tmp_path)
    with LoopbackCluster(workers=0, token=False, ray_version="2.0.0") as older:
        env = environment(older.driver_env(), tmp_path / "home")
        argv = command(images, tmp_path / "vectors", "--address", older.address)
        mismatch, seconds = run(argv, env, tmp_path)
    stopped, stopped_seconds = run(argv, env, tmp_path)

    assert re.search(
        rf"runs Ray 2\.0\.0 on Python \S+, this machine Ray {re.escape(ray_version())} on Python",
        one_error_line(mismatch),
    )
    assert "cannot reach the Ray cluster at" in one_error_line(stopped)
    assert max(seconds, stopped_seconds) - started <= 2 * JOIN_SECONDS


def ray_version() -> str:
    import ray

    return ray.__version__
