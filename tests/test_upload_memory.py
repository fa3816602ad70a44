"""A large upload through the served Data page, in Chromium: the server's memory before, at its peak and after.

Run with -s to see the figures; RETRIEVAL_LAB_UPLOAD_MB sets the upload's size (default 200).
"""

import os
import time
import zipfile

import numpy as np
import pytest
from input_files import BLUE, RED, jpeg
from playwright.sync_api import expect, sync_playwright

from bench.browser import ACTION_TIMEOUT_MS, RUN_TIMEOUT_MS, VIEWPORT, wait_for_run
from bench.served import CHROMIUM, CHROMIUM_ARGS, serve, server_memory_mb, server_process

UPLOAD_MB = int(os.environ.get("RETRIEVAL_LAB_UPLOAD_MB", "200"))
# Share of the upload's size the server may still hold once it has been added: what the page keeps
# (counts, thumbnails) is small; one copy of the upload would be the whole size.
KEPT_SHARE = 0.25
# Copies of the upload the server may hold at its peak: Streamlit's own and the deep copy a run gets
# of the uploader's value; a third would be an earlier run's copy outliving its run.
PEAK_COPIES = 2.5
# The server warms up in the background (the analysis imports, the model, UMAP's compilation):
# memory counts as settled once it moves less than STEADY_MB over STEADY_SAMPLES samples in a row.
STEADY_MB, STEADY_SAMPLES, SAMPLE_S, SETTLE_S = 3.0, 4, 2.0, 300


def upload_zip(path, megabytes: int):
    """A dataset zip: a few images, and incompressible filler the dataset refuses by its name."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for index in range(3):
            archive.writestr(f"train/red/r{index}.jpg", jpeg(RED))
            archive.writestr(f"train/blue/b{index}.jpg", jpeg(BLUE))
        archive.writestr("test/t.jpg", jpeg(RED))
        with archive.open("test/filler.bin", "w", force_zip64=True) as filler:
            for _ in range(megabytes):
                filler.write(rng.bytes(1 << 20))
    return path


def settled_memory_mb(base_url: str) -> float:
    """The server's resident memory once it holds steady (or after SETTLE_S)."""
    deadline = time.monotonic() + SETTLE_S
    samples = [server_memory_mb(base_url)]
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        samples.append(server_memory_mb(base_url))
        recent = samples[-STEADY_SAMPLES:]
        if len(recent) == STEADY_SAMPLES and max(recent) - min(recent) < STEADY_MB:
            break
    return samples[-1]


def test_a_large_upload_is_not_kept_in_the_servers_memory(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    archive = upload_zip(tmp_path / "large.zip", UPLOAD_MB)
    home = tmp_path / "home"
    home.mkdir()
    with (
        serve("app.py", home, tmp_path / "streamlit.log") as base_url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_context(viewport=VIEWPORT).new_page()
        tab.set_default_timeout(ACTION_TIMEOUT_MS)
        tab.goto(base_url)
        wait_for_run(tab)
        before = settled_memory_mb(base_url)
        (server_process(base_url) / "clear_refs").write_text("5")  # the peak counts from here
        tab.get_by_text("Add a dataset").click()
        tab.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(archive))
        expect(tab.get_by_test_id("stFileChip")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(tab.get_by_test_id("stFileChipIconSpinner")).to_have_count(0, timeout=RUN_TIMEOUT_MS)
        wait_for_run(tab)
        tab.get_by_label("Name", exact=True).fill("large")
        add = tab.get_by_role("button", name="Add upload")
        expect(add).to_be_enabled(timeout=RUN_TIMEOUT_MS)
        add.click()
        # The upload's counts: its 7 images, and the filler refused by its name.
        expect(tab.get_by_text("7 accepted, 1 refused")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        wait_for_run(tab)
        after = settled_memory_mb(base_url)
        peak = server_memory_mb(base_url, "VmHWM")
        browser.close()
    print(
        f"\n{UPLOAD_MB} MB upload: server RSS {before:.0f} MB before, peak {peak:.0f} MB, "
        f"{after:.0f} MB after ({after - before:+.0f} MB)"
    )
    assert after - before < KEPT_SHARE * UPLOAD_MB, (
        f"the server kept {after - before:.0f} MB after a {UPLOAD_MB} MB upload"
    )
    assert peak - before < PEAK_COPIES * UPLOAD_MB, (
        f"the server took {peak - before:.0f} MB more at its peak for a {UPLOAD_MB} MB upload"
    )
