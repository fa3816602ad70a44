"""Shared fixtures: an offline Hub, a tiny random CLIP checkpoint, a private workspace, image files."""

import os
from pathlib import Path

# Tests never reach the Hub. huggingface_hub reads this once, when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
from hypothesis import settings
from input_files import BLUE, RED, jpeg
from PIL import Image

# Property tests check what holds, not how fast: on a machine shared with other jobs a case can take
# longer than hypothesis's 200 ms deadline, which would fail a correct test.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")

TINY_CLIP_IMAGE_SIZE = 32  # pixels a side the tiny CLIP's processor feeds the model
TINY_CLIP_MAX_TOKENS = 32  # text positions of the tiny CLIP; longer prompts are truncated


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random, seeded CLIP checkpoint (16-d vectors) saved the way save_pretrained saves one."""
    from bench.fixtures import random_clip_checkpoint

    return random_clip_checkpoint(
        tmp_path_factory.mktemp("checkpoints") / "tiny-clip",
        tower={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        image_size=TINY_CLIP_IMAGE_SIZE,
        patch_size=8,
        max_tokens=TINY_CLIP_MAX_TOKENS,
        projection_dim=16,
    )


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A private workspace home (RETRIEVAL_LAB_HOME) for the test."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("RETRIEVAL_LAB_HOME", str(home))
    return home


@pytest.fixture
def image_file(tmp_path):
    """Writes a noisy solid-colour image under tmp_path; the format follows the suffix.

    image_file("train/red/a.png", colour=(220, 30, 30), size=(48, 32)) -> Path. Seeded noise
    makes every file's bytes different, so no two images share a cache key by accident.
    """
    rng = np.random.default_rng(0)

    def write(relative: str, colour=(128, 128, 128), size=(32, 32), noise: float = 20.0) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = size
        pixels = np.asarray(colour, dtype=float) + rng.normal(0.0, noise, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        return path

    return write


@pytest.fixture
def small_layout() -> dict[str, bytes]:
    """A folder layout: two train classes, two test images without truth (path -> bytes)."""
    return {
        "train/cat/c1.jpg": jpeg(RED),
        "train/cat/c2.jpg": jpeg(RED),
        "train/dog/d1.jpg": jpeg(BLUE),
        "test/t1.jpg": jpeg(RED),
        "test/t2.jpg": jpeg(BLUE),
    }


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`streamlit run app.py` on a free local port, offline, with a private workspace home."""
    from bench.served import ServerFailed, serve

    home = tmp_path_factory.mktemp("retrieval-lab-home")
    log = home / "streamlit.log"
    try:
        with serve("app.py", home, log) as base_url:
            yield base_url
    except ServerFailed as failure:
        pytest.fail(str(failure))
    finally:
        print(f"\nstreamlit log: {log}")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, for the module (CI fails without it, elsewhere skips)."""
    from playwright.sync_api import sync_playwright

    from bench.served import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs it, so in CI this is an error")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def fresh_server(workspace, monkeypatch):
    """A private workspace home, no Hub, and nothing cached by another test: for modules that run
    pages or the dashboard's glue (pytestmark = pytest.mark.usefixtures("fresh_server"))."""
    import streamlit as st

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def injected_workspace(tmp_path):
    """A workspace on digits with near-duplicates and flipped labels injected (bench.audit), and what was injected."""
    from bench.audit import injected_digits
    from core.io.parquet import write_embeddings
    from core.session.workspace import DatasetEntry, Workspace

    injected = injected_digits(seed=0, per_class=30)
    path = tmp_path / "injected.parquet"
    write_embeddings(path, injected.embeddings)
    workspace = Workspace("injected")
    workspace.add_dataset(DatasetEntry("injected digits", str(path), "parquet"))
    workspace.set("dataset", "injected digits")
    return workspace.id, injected
