"""The shared report in a real browser: opened from disk in Chromium, it draws every figure and asks the network for nothing."""

import io
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from test_report import clustered, noise_image, report_of

from bench.browser import ACTION_TIMEOUT_MS, VIEWPORT
from core.report.config import MAX_CARDS_PER_KIND, ReportConfig

# Labels without a space to break at: a data: URL (122 characters), a URL, 300 and 10,000 letters,
# CJK (which breaks anywhere already); ids made of them.
LONG_LABELS = [
    "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 2,
    "http://example.com/" + "p" * 140,
    "L" * 300,
    "M" * 10_000,
    "名前" * 100,
    "short",
]
NARROW = {"width": 1024, "height": 900}

PROBE = "http://127.0.0.1:8765/probe.png"  # nothing listens there: a request to it would be a leak
FIGURES = ("contamination", "scores", "map-at-k", "map")
# A marker pixel is a saturated colour; the plot's background and grid lines are greys and pale blue.
SATURATION = 80
MIN_MARKER_PIXELS = 200


def saturated_pixels(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > SATURATION).sum())


def test_the_report_opens_from_disk_draws_its_figures_and_requests_nothing(browser, tmp_path):
    labels = [f"<img src={PROBE}>", f"![x]({PROBE})", "plain"]
    embeddings = clustered(
        n_classes=3,
        per_class=3,
        n_test=60,
        labels=labels,
        ids=[f"<img src={PROBE}?{i}>" for i in range(69)],
    )
    image = noise_image(tmp_path / "noise.png")
    page = report_of(
        embeddings,
        dict.fromkeys(embeddings.ids, image),
        ReportConfig(map_method="pca"),
        name=f"<img src={PROBE}>",
    )
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        tab = context.new_page()
        requests, errors = [], []
        tab.on("request", lambda request: requests.append(request.url))
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(report.as_uri())
        for figure in FIGURES:
            expect(tab.locator(f"#figure-{figure}.js-plotly-plot .main-svg").first).to_be_attached()
            expect(
                tab.locator(f"#figure-{figure} .xtick").first
            ).to_be_attached()  # axes laid out: the figure drew
        expect(tab.locator(".card img").first).to_be_visible()
        assert tab.locator(".card img").evaluate_all(
            "images => images.every(image => image.complete && image.naturalWidth > 0)"
        )

        plot_area = tab.locator("#figure-map .nsewdrag").first
        plot_area.scroll_into_view_if_needed()
        tab.wait_for_timeout(500)  # WebGL paints on the next animation frame
        assert (
            saturated_pixels(tab.screenshot(clip=plot_area.bounding_box())) >= MIN_MARKER_PIXELS
        ), "the map's points are drawn"
    finally:
        context.close()
    assert not errors, errors
    assert requests and all(urlparse(url).scheme in ("file", "data") for url in requests), [
        url for url in requests if not url.startswith("data:")
    ]


@pytest.fixture(scope="module")
def narrow_report(browser, tmp_path_factory):
    """A report of long, unbreakable labels and ids, open in Chromium 1,024 pixels wide."""
    folder = tmp_path_factory.mktemp("narrow-report")
    embeddings = clustered(
        n_classes=len(LONG_LABELS),
        per_class=3,
        n_test=40,
        labels=LONG_LABELS,
        ids=[f"{LONG_LABELS[i % len(LONG_LABELS)]}#{i}" for i in range(58)],
    )
    image = noise_image(folder / "noise.png")
    report = folder / "report.html"
    page = report_of(
        embeddings,
        dict.fromkeys(embeddings.ids, image),
        ReportConfig(map_method="pca", cards=MAX_CARDS_PER_KIND),
        name=LONG_LABELS[0],
    )
    report.write_text(page, encoding="utf-8")
    context = browser.new_context(viewport=NARROW)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    tab = context.new_page()
    requests = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.goto(report.as_uri())
    for figure in FIGURES:
        expect(tab.locator(f"#figure-{figure} .xtick").first).to_be_attached()
    yield tab, requests
    context.close()


def test_long_labels_wrap_within_the_page_at_1024_px(narrow_report):
    tab, _ = narrow_report
    width, visible = tab.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width <= visible, f"the page scrolls sideways: {width} px wide in {visible}"
    # An elided label shows the whole of itself on hover.
    titles = tab.locator("td span[title]").evaluate_all("spans => spans.map(span => span.title)")
    assert "L" * 300 in titles


def test_the_map_axes_fit_the_points(narrow_report):
    tab, _ = narrow_report
    axes = tab.evaluate(
        """() => {
            const figure = document.getElementById('figure-map');
            const points = figure._fullData.filter(trace => trace.visible !== false);
            const extent = (key) => {
                const values = points.flatMap(trace => Array.from(trace[key]));
                return [Math.min(...values), Math.max(...values)];
            };
            return {x: [figure._fullLayout.xaxis.range, extent('x')],
                    y: [figure._fullLayout.yaxis.range, extent('y')]};
        }"""
    )
    for axis, ((low, high), (least, most)) in axes.items():
        assert low <= least and most <= high, (axis, (low, high), (least, most))
        # Plotly pads a marker's axis by a few percent each side; past half the points' span again,
        # the rest is empty plot (a range of 16 for points spanning 4 was what equal units made).
        assert high - low <= 1.5 * (most - least), (axis, (low, high), (least, most))


def test_the_best_point_words_stay_clear_of_the_current_threshold_line(narrow_report):
    tab, _ = narrow_report
    figure = tab.locator("#figure-map-at-k")
    figure.scroll_into_view_if_needed()
    words = figure.locator("text", has_text="best MAP@5").bounding_box()
    # The current threshold's line and words live in the plot area, wherever the threshold is.
    plot = figure.locator(".nsewdrag").first.bounding_box()
    current = figure.locator(".annotation-text", has_text="current").bounding_box()

    def overlap(a, b):
        return (
            a["x"] < b["x"] + b["width"]
            and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"]
            and b["y"] < a["y"] + a["height"]
        )

    assert not overlap(words, plot) and not overlap(words, current), (words, plot, current)


def test_the_modebar_offers_nothing_that_leaves_the_machine(narrow_report):
    tab, requests = narrow_report
    titles = []
    for figure in FIGURES:
        tab.locator(f"#figure-{figure} .nsewdrag").first.hover()
        titles += tab.locator(f"#figure-{figure} .modebar-btn").evaluate_all(
            "buttons => buttons.map(button => button.getAttribute('data-title'))"
        )
    assert "Download plot as a PNG" in titles and not [
        title for title in titles if "share" in title.lower() or "cloud" in title.lower()
    ]
    outside = tab.evaluate(
        """() => Array.from(document.querySelectorAll('[href], [src], [action]'))
            .map(element => element.getAttribute('href') || element.getAttribute('src') || element.getAttribute('action'))
            .filter(address => /^(https?:)?\\/\\//i.test(address))"""
    )
    assert not outside, outside
    assert all(urlparse(url).scheme in ("file", "data") for url in requests), requests
