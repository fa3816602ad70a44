"""Driving the served dashboard in Chromium as a user would: open a page, wait for its run, read a metric."""

from __future__ import annotations

from urllib.parse import urlparse

from playwright.sync_api import Page, expect

RUN_TIMEOUT_MS = 120_000  # a first run embeds the demo and may compile UMAP (numba) on 2 shared cores
ACTION_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1440, "height": 1000}
# URL path of each page (st.Page infers it from the file stem; the default page sits at the root).
PAGE_PATHS = {
    "Data": "",
    "Embed": "embed",
    "Map": "map",
    "Distractors": "distractors",
    "Neighbours": "neighbours",
    "Evaluate & export": "evaluate",
    "Text ↔ image": "text_image",
}


def wait_for_run(tab: Page, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the script run has finished and the page shows its title."""
    app = tab.get_by_test_id("stApp")
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout_ms)
    expect(tab.get_by_test_id("stStatusWidget")).to_be_hidden(timeout=timeout_ms)
    expect(page_title(tab)).to_be_visible(timeout=timeout_ms)
    # Element code loads lazily: grey skeletons stand in until it arrives.
    expect(tab.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)


def url_path(url: str) -> str:
    return urlparse(url).path.strip("/")


def open_page(tab: Page, title: str, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Click the page's sidebar link, as a user would, and wait for its run to finish."""
    tab.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    # Streamlit clears the old page on click and moves the URL when the new run starts.
    tab.wait_for_url(lambda url: url_path(url) == PAGE_PATHS[title], timeout=timeout_ms)
    wait_for_run(tab, timeout_ms)
    expect(page_title(tab)).to_have_text(title)


def page_title(tab: Page):
    return tab.get_by_test_id("stMain").locator("h1").first


def metric(tab: Page, label: str):
    """The value of the st.metric labelled exactly `label`."""
    labelled = tab.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return tab.get_by_test_id("stMetric").filter(has=labelled).get_by_test_id("stMetricValue")
