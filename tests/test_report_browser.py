"""The shared report in a real browser: opened from disk in Chromium, it draws every figure and asks the network for nothing."""

import io
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from playwright.sync_api import expect
from test_report import clustered, noise_image, report_of

from bench.browser import ACTION_TIMEOUT_MS, VIEWPORT
from core.report.config import ReportConfig

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
