"""Real-browser test: Playwright drives Debian's chromium through `streamlit run app.py`, offline.

Screenshots of every page land in a temporary folder whose path is printed (run with -s).
"""

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, expect

from bench.browser import (
    ACTION_TIMEOUT_MS,
    PAGE_PATHS,
    RUN_TIMEOUT_MS,
    VIEWPORT,
    count_shown,
    metric,
    open_page,
    page_title,
    threshold_slider,
    url_path,
    wait_for_rest,
    wait_for_run,
)

MIN_NEIGHBOUR_CARDS = 5  # top-5 retrieval: a card per neighbour, each with its image
SLIDER_STEP = 0.001  # the Distractors page's threshold slider moves by this per arrow key
BURSTS, PRESSES_PER_BURST = 3, 5
IDLE_CHECK_MS = 1_500
# Buttons, tabs and options whose words do not all show: clipped by a box that scrolls or hides what overflows
# (a segmented control too narrow for its options), or cut by an ellipsis inside the control.
CUT_OFF_CONTROLS = """() => {
    const controls = document.querySelectorAll(
        "[data-testid=stMain] button, [data-testid=stMain] [role=tab], [data-testid=stMain] [role=radio]");
    const clips = (element) => getComputedStyle(element).overflowX !== "visible";
    const cut = [];
    for (const control of controls) {
        const box = control.getBoundingClientRect();
        const words = control.textContent.trim();
        if (!words || box.width === 0) continue;  // an icon, or hidden in a closed expander or another tab
        let clipped = [control, ...control.querySelectorAll("*")].some(
            (inner) => clips(inner) && inner.textContent.trim() && inner.scrollWidth > inner.clientWidth + 1);
        for (let outer = control.parentElement; outer && outer.dataset.testid !== "stMain"; outer = outer.parentElement) {
            const room = outer.getBoundingClientRect();
            clipped ||= clips(outer) && (box.left < room.left - 1 || box.right > room.right + 1);
        }
        if (clipped) cut.push(words);
    }
    return cut;
}"""


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser-screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def page(browser, app_url, screenshots, request):
    """A fresh tab on the demo's Data page; a failing test leaves <test>-failure.png behind."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    tab = context.new_page()
    failures_before = request.session.testsfailed
    try:
        try:
            tab.goto(app_url)
            wait_for_run(tab)
        except Exception:
            _failure_screenshot(tab, screenshots, request.node.name)
            raise
        yield tab
        if request.session.testsfailed > failures_before:
            _failure_screenshot(tab, screenshots, request.node.name)
    finally:
        context.close()


def _failure_screenshot(tab: Page, screenshots: Path, test_name: str) -> None:
    path = screenshots / f"{test_name}-failure.png"
    tab.screenshot(path=str(path), full_page=True)
    print(f"\nfailure screenshot: {path}")


def _check(tab: Page, screenshots: Path, name: str) -> None:
    """No exception box and no broken image on the page; a full-page screenshot for a human to look at."""
    images = tab.get_by_test_id("stMain").locator("img")
    tab.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stMain] img')].every(image => image.complete)",
        timeout=ACTION_TIMEOUT_MS,
    )
    path = screenshots / f"{name}.png"
    _screenshot_whole_page(tab, path)
    exceptions = tab.get_by_test_id("stException")
    assert exceptions.count() == 0, (
        f"the {name} page shows an exception (see {path}):\n{exceptions.first.inner_text()}"
    )
    broken = images.evaluate_all(
        "images => images.filter(image => image.naturalWidth === 0).map(image => image.src)"
    )
    assert not broken, f"the {name} page shows broken images (see {path}): {broken}"
    cut = tab.evaluate(CUT_OFF_CONTROLS)
    assert not cut, f"the {name} page cuts off control labels (see {path}): {cut}"


def _screenshot_whole_page(tab: Page, path: Path) -> None:
    """Streamlit scrolls inside its main block, so grow the viewport to the content for the shot."""
    content_height = tab.get_by_test_id("stMain").evaluate("main => main.scrollHeight")
    tab.set_viewport_size(
        {"width": VIEWPORT["width"], "height": min(max(content_height, VIEWPORT["height"]), 8000)}
    )
    try:
        tab.screenshot(path=str(path), full_page=True)
    finally:
        tab.set_viewport_size(VIEWPORT)


def test_every_page_renders_without_an_exception(page, screenshots):
    links = page.get_by_test_id("stSidebarNav").get_by_role("link")
    expect(links).to_have_count(len(PAGE_PATHS))
    linked = {
        url_path(links.nth(index).get_attribute("href") or "") for index in range(len(PAGE_PATHS))
    }
    assert linked == set(PAGE_PATHS.values())
    expect(page_title(page)).to_have_text("Data")
    _check(page, screenshots, "data")
    # The tab opened on Data; visiting it last also checks the way back to the root page.
    for title in [*list(PAGE_PATHS)[1:], "Data"]:
        open_page(page, title)
        _check(page, screenshots, PAGE_PATHS[title] or "data-again")


def test_threshold_slider_changes_the_counts(page, screenshots):
    open_page(page, "Distractors")
    slider = threshold_slider(page)
    flagged, kept, shown_threshold = (
        metric(page, label) for label in ("Flagged as distractors", "Kept", "Threshold")
    )
    n_test = count_shown(flagged.inner_text()) + count_shown(kept.inner_text())
    start = slider.input_value()

    slider.focus()
    for _ in range(3):  # one step at a time, each answered in the browser
        slider.press("ArrowRight")
        expect(shown_threshold).to_have_text(
            f"{float(slider.input_value()):.3f}", timeout=RUN_TIMEOUT_MS
        )
    assert float(slider.input_value()) > float(start)
    # The charts' markers moved with it, in the browser: the contamination curve names the same figures.
    contamination_marker = page.get_by_role("img", name="Contamination rate by threshold").locator(
        ".rl-marker-label"
    )
    expect(contamination_marker).to_have_text(
        f"{shown_threshold.inner_text()} → {metric(page, 'Contamination').inner_text()}"
    )
    # The expected MAP@5 curve without truth carries its band, and its marker names the figure under the slider.
    expected_chart = page.get_by_role("img", name="Expected MAP@5 by threshold, without truth")
    expect(expected_chart.locator("path.rl-band")).to_have_count(1)
    expect(expected_chart.locator(".rl-marker-label")).to_have_text(
        f"expected {metric(page, 'Expected MAP@5').inner_text()} at {shown_threshold.inner_text()}"
    )

    # The slider's range brackets every score: at its top the whole test set is flagged, at its bottom none.
    slider.press("End")
    expect(flagged).to_have_text(f"{n_test:,}", timeout=RUN_TIMEOUT_MS)
    expect(kept).to_have_text("0", timeout=RUN_TIMEOUT_MS)
    wait_for_rest(page, shown_threshold.inner_text())
    _check(page, screenshots, "distractors-threshold-at-maximum")
    slider.press("Home")
    expect(flagged).to_have_text("0", timeout=RUN_TIMEOUT_MS)
    expect(kept).to_have_text(f"{n_test:,}", timeout=RUN_TIMEOUT_MS)
    wait_for_rest(page, shown_threshold.inner_text())
    _check(page, screenshots, "distractors-threshold-at-minimum")


def test_a_burst_of_key_presses_ends_where_the_user_left_the_slider(page):
    """Presses sent without waiting: once idle, slider, metrics, counts, the server's "What flips" and the saved value agree."""
    open_page(page, "Distractors")
    slider = threshold_slider(page)
    flagged, kept, shown_threshold = (
        metric(page, label) for label in ("Flagged as distractors", "Kept", "Threshold")
    )
    n_test = count_shown(flagged.inner_text()) + count_shown(kept.inner_text())
    for _ in range(BURSTS):
        expected = round(float(slider.input_value()) + PRESSES_PER_BURST * SLIDER_STEP, 3)
        slider.focus()
        for _ in range(PRESSES_PER_BURST):
            page.keyboard.press("ArrowRight")  # no wait between presses
        expect(shown_threshold).to_have_text(f"{expected:.3f}", timeout=RUN_TIMEOUT_MS)
        wait_for_rest(page, f"{expected:.3f}")
        # a stale rerun would snap the slider back in this window
        page.wait_for_timeout(IDLE_CHECK_MS)
        wait_for_run(page)
        assert float(slider.input_value()) == pytest.approx(expected), "the slider snapped back"
        expect(shown_threshold).to_have_text(f"{expected:.3f}")
        assert count_shown(flagged.inner_text()) + count_shown(kept.inner_text()) == n_test
    flagged_after_bursts = flagged.inner_text()

    page.reload()  # the saved threshold, and the counts recomputed from it
    wait_for_run(page)
    expect(shown_threshold).to_have_text(f"{expected:.3f}", timeout=RUN_TIMEOUT_MS)
    assert float(slider.input_value()) == pytest.approx(expected)
    expect(flagged).to_have_text(flagged_after_bursts)


# Every slider position, the marker's words against the best point's dot and the chart's other words, in the
# chart's own units; the slider is put back where it was.
MARKER_LABEL_OVERLAPS = """(chart) => {
    const slider = chart.getRootNode().querySelector("input.rl-slider");  // the component may live in a shadow root
    const label = chart.querySelector(".rl-marker-label");
    const others = [...chart.querySelectorAll("circle.rl-best, text")].filter((shape) => shape !== label);
    const meet = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
    const start = slider.value, overlaps = [];
    const positions = Math.round((Number(slider.max) - Number(slider.min)) / Number(slider.step));
    for (let step = 0; step <= positions; step++) {
        slider.value = Number(slider.min) + step * Number(slider.step);
        slider.dispatchEvent(new Event("input"));
        const box = label.getBBox();
        for (const other of others) {
            if (meet(box, other.getBBox())) overlaps.push(`${slider.value}: ${other.textContent || "best point"}`);
        }
    }
    slider.value = start;
    slider.dispatchEvent(new Event("input"));
    return overlaps;
}"""


def test_the_markers_words_never_cover_the_best_point_or_other_words(page):
    open_page(page, "Distractors")
    expect(threshold_slider(page)).to_be_visible()
    expect(
        page.get_by_role("img", name="MAP@5 by threshold", exact=True).locator("circle.rl-best")
    ).to_have_count(1)
    charts = page.locator("svg.rl-chart")
    overlaps = {
        charts.nth(index).get_attribute("aria-label"): charts.nth(index).evaluate(
            MARKER_LABEL_OVERLAPS
        )
        for index in range(charts.count())
    }
    assert len(overlaps) >= 3 and not any(overlaps.values()), overlaps


def test_map_redraws_with_another_method(page, screenshots):
    open_page(page, "Map")
    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts.locator(".gtitle").filter(has_text="UMAP map")).to_be_visible(
        timeout=RUN_TIMEOUT_MS
    )
    page.get_by_test_id("stMain").get_by_role("radio", name="PCA", exact=True).click()
    expect(charts.locator(".gtitle").filter(has_text="PCA map")).to_be_visible(
        timeout=RUN_TIMEOUT_MS
    )
    wait_for_run(page)
    expect(charts).to_have_count(1)  # the UMAP chart is replaced, not left beside the new one
    _check(page, screenshots, "map-pca")


def test_neighbours_page_shows_neighbour_images(page, screenshots):
    open_page(page, "Neighbours")
    # st.container(key="neighbour_card_<rank>")
    cards = page.locator("[class*='st-key-neighbour_card_']")
    expect(cards.nth(MIN_NEIGHBOUR_CARDS - 1)).to_be_visible()
    for rank in range(MIN_NEIGHBOUR_CARDS):
        expect(cards.nth(rank).get_by_test_id("stImage")).to_be_visible()
        expect(cards.nth(rank)).to_contain_text("cosine")
    _check(page, screenshots, "neighbours")


def test_workspace_survives_page_switches(page):
    workspace_id = parse_qs(urlparse(page.url).query)["ws"][0]
    for title in ("Distractors", "Data"):
        open_page(page, title)
        assert parse_qs(urlparse(page.url).query).get("ws") == [workspace_id]
        expect(page.get_by_test_id("stSidebar")).to_contain_text(
            f"Workspace {workspace_id}", timeout=RUN_TIMEOUT_MS
        )
