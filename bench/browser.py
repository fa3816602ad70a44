"""Driving the served dashboard in Chromium as a user would: open a page, wait for its run, read a metric."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

from playwright.async_api import async_playwright
from playwright.async_api import expect as expect_async
from playwright.sync_api import Locator, Page, expect

from bench.served import CHROMIUM, CHROMIUM_ARGS

# a first run embeds the demo and may compile UMAP (numba) on 2 shared cores
RUN_TIMEOUT_MS = 120_000
ACTION_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1440, "height": 1000}
THRESHOLD_SLIDER = "Distractor threshold"  # the Distractors page's slider, by its label
# URL path of each page (st.Page infers it from the file stem; the default page sits at the root).
PAGE_PATHS = {
    "Data": "",
    "Embed": "embed",
    "Map": "map",
    "Distractors": "distractors",
    "Neighbours": "neighbours",
    "Evaluate & export": "evaluate",
    "Audit": "audit",
    "Text ↔ image": "text_image",
}


# A run has finished when all of these hold at once; the page itself checks them every 20 ms.
# (expect() retries at 100, 250, 500 and then every 1,000 ms, so timing by it rounded a page that
# settled after 0.4 s up to 0.85 s.) Element code loads lazily: grey skeletons stand in until it arrives.
_RUN_FINISHED = """() => {
  const shown = (element) => {
    const box = element.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && getComputedStyle(element).visibility === "visible";
  };
  const app = document.querySelector('[data-testid="stApp"]');
  const title = document.querySelector('[data-testid="stMain"] h1');
  return app !== null && app.getAttribute("data-test-script-state") === "notRunning"
    && ![...document.querySelectorAll('[data-testid="stStatusWidget"]')].some(shown)
    && title !== null && shown(title)
    && document.querySelectorAll('[data-testid="stSkeleton"]').length === 0;
}"""
SETTLED_POLL_MS = 20


def wait_for_run(tab: Page, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the script run has finished, nothing is loading and the page shows its title."""
    tab.wait_for_function(_RUN_FINISHED, polling=SETTLED_POLL_MS, timeout=timeout_ms)


def wait_until_visible(locator: Locator, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Return once `locator` is visible, looking every 20 ms, for timings (Playwright's own waits look
    at 100, 250, 500 and then every 1,000 ms)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not locator.is_visible():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{locator} was not visible within {timeout_ms / 1000:.0f} s")
        time.sleep(SETTLED_POLL_MS / 1000)


def wait_for_rest(tab: Page, threshold: str, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the server has taken the threshold the slider rests on (its "What flips" names it) and its run ends.

    Until then the browser shows the server's previous run, whose images the next run replaces."""
    expect(tab.get_by_text(f"and {threshold}")).to_be_visible(timeout=timeout_ms)
    wait_for_run(tab, timeout_ms)


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
    """The value of the metric labelled exactly `label`: an st.metric, or one under the live threshold slider."""
    labelled = tab.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    streamlit_metric = (
        tab.get_by_test_id("stMetric").filter(has=labelled).get_by_test_id("stMetricValue")
    )
    live_label = tab.locator(".rl-label").get_by_text(label, exact=True)
    return streamlit_metric.or_(
        tab.locator(".rl-metric").filter(has=live_label).locator(".rl-value")
    )


def count_shown(text: str) -> int:
    """A count as a metric shows it, thousands separated ("13,000")."""
    return int(text.replace(",", ""))


def threshold_slider(tab):
    """The Distractors page's threshold slider (an input[type=range]); works for sync and async pages."""
    return tab.get_by_role("slider", name=THRESHOLD_SLIDER, exact=True)


# Records, per key press, the time from the key event to the next paint after the page handled it: the Event
# Timing API, from which Chromium computes Interaction to Next Paint. It measures in the page what a user sees,
# without the test driver's own round trips. Chromium reports only interactions of 16 ms or more.
RECORD_KEY_PRESSES = """() => {
    window.keyPressMs = {};
    new PerformanceObserver(list => {
        for (const entry of list.getEntries()) {
            if (entry.interactionId) {
                window.keyPressMs[entry.interactionId] = Math.max(window.keyPressMs[entry.interactionId] || 0, entry.duration);
            }
        }
    }).observe({type: "event", durationThreshold: 16});
}"""
READ_KEY_PRESSES = "() => Object.values(window.keyPressMs)"
UNREPORTED_PRESS_S = 0.016  # a press Chromium did not report took less than this; counted as this
REPORT_DELAY_MS = 500  # Chromium hands event entries to observers in batches, after the paint


def press_seconds(reported_ms: list[float], presses: int) -> list[float]:
    """Seconds from each of `presses` key presses to the screen showing its result, from RECORD_KEY_PRESSES."""
    if len(reported_ms) > presses:
        raise ValueError(
            f"{len(reported_ms)} interactions reported for {presses} key presses: something else was pressed"
        )
    return [ms / 1000 for ms in reported_ms] + [UNREPORTED_PRESS_S] * (presses - len(reported_ms))


async def _slider_session(
    browser,
    app_url: str,
    workspace_id: str,
    steps: int,
    latencies: list[float],
    everyone_ready: asyncio.Barrier,
) -> None:
    """One user: open the Distractors page, wait for the others to have theirs open, then press → `steps` times,
    each until the new threshold shows, timed in the page from the key event to the next paint."""
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        tab = await context.new_page()
        tab.set_default_timeout(ACTION_TIMEOUT_MS)
        await tab.goto(f"{app_url}/distractors?ws={workspace_id}")
        threshold, slider = metric(tab, "Threshold"), threshold_slider(tab)
        await expect_async(threshold).to_be_visible(timeout=RUN_TIMEOUT_MS)
        await expect_async(tab.get_by_test_id("stApp")).to_have_attribute(
            "data-test-script-state", "notRunning", timeout=RUN_TIMEOUT_MS
        )
        # the sessions press at once, not while others are still opening the page
        await everyone_ready.wait()
        await tab.evaluate(RECORD_KEY_PRESSES)
        await slider.focus()
        for _ in range(steps):
            await slider.press("ArrowRight")
            shown = f"{float(await slider.input_value()):.3f}"
            await expect_async(threshold).to_have_text(shown, timeout=RUN_TIMEOUT_MS)
        await tab.wait_for_timeout(REPORT_DELAY_MS)
        latencies += press_seconds(await tab.evaluate(READ_KEY_PRESSES), steps)
        exceptions = await tab.get_by_test_id("stException").count()
        assert exceptions == 0, f"workspace {workspace_id}: the Distractors page shows an exception"
    finally:
        await context.close()


async def concurrent_slider_presses(
    app_url: str, workspace_ids: list[str], steps: int
) -> list[float]:
    """One browser session per workspace, each opening the Distractors page, then all pressing → `steps` times at
    once: every press's seconds from the key event to the next paint, with the new threshold shown."""
    latencies: list[float] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            everyone_ready = asyncio.Barrier(len(workspace_ids))
            await asyncio.gather(
                *(
                    _slider_session(browser, app_url, ws, steps, latencies, everyone_ready)
                    for ws in workspace_ids
                )
            )
        finally:
            await browser.close()
    return latencies
