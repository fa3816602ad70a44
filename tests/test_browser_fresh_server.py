"""Real-browser tests on a server whose first request is a deep link into hostile data.

A bookmarked page opened first on a fresh server runs inside app.py's navigation, and nothing a
dataset or an address says becomes a link, an image or a request that leaves the app.
"""

from urllib.parse import parse_qs, quote, urlparse

import pytest
from playwright.sync_api import expect
from test_hostile_text import PROBE, write_hostile_workspace

from bench.browser import (
    PAGE_PATHS,
    RUN_TIMEOUT_MS,
    VIEWPORT,
    open_page,
    page_title,
    threshold_slider,
    wait_for_run,
)
from bench.served import ServerFailed, serve

# Elements that could fetch or link to what the data says.
LEAKED_ELEMENTS = "a[href*='example.invalid'], a[href*='8765'], a[href^='mailto:'], img[src*='8765'], img[src*='example.invalid']"


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """A fresh server whose workspace home already holds the hostile workspace; nothing requested yet."""
    home = tmp_path_factory.mktemp("hostile-home")
    workspace_id = write_hostile_workspace(tmp_path_factory.mktemp("hostile-data"), home)
    try:
        with serve("app.py", home, home / "streamlit.log") as base_url:
            yield base_url, workspace_id
    except ServerFailed as failure:
        pytest.fail(str(failure))


@pytest.fixture
def recorded_tab(browser, hostile_server):
    """A tab recording every request it makes; the test checks none leaves the app."""
    base_url, _ = hostile_server
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(RUN_TIMEOUT_MS)
    tab = context.new_page()
    requests = []
    tab.on("request", lambda request: requests.append(request.url))
    try:
        yield tab, requests
    finally:
        context.close()
    outside = [url for url in requests if not url.startswith((base_url, "data:", "blob:"))]
    assert not outside, f"requests left the app: {outside[:5]}"


def assert_nothing_leaked(tab) -> None:
    leaked = tab.locator(LEAKED_ELEMENTS)
    assert leaked.count() == 0, leaked.evaluate_all(
        "elements => elements.map(e => e.outerHTML.slice(0, 120))"
    )
    assert tab.get_by_test_id("stException").count() == 0


def test_a_deep_link_first_on_a_fresh_server_opens_the_page_inside_the_app(
    recorded_tab, hostile_server
):
    tab, _ = recorded_tab
    base_url, workspace_id = hostile_server
    tab.goto(f"{base_url}/distractors?ws={workspace_id}")  # the server's very first request
    wait_for_run(tab)
    expect(page_title(tab)).to_have_text("Distractors", timeout=RUN_TIMEOUT_MS)
    expect(tab.get_by_test_id("stSidebarNav").get_by_role("link")).to_have_count(
        len(PAGE_PATHS), timeout=RUN_TIMEOUT_MS
    )
    expect(tab.get_by_test_id("stSidebar")).to_contain_text(
        f"Workspace {workspace_id}", timeout=RUN_TIMEOUT_MS
    )
    assert urlparse(tab.url).path.rstrip("/").endswith("/distractors")
    assert parse_qs(urlparse(tab.url).query) == {"ws": [workspace_id]}
    assert_nothing_leaked(tab)


def test_hostile_ids_and_labels_make_no_link_image_or_request_on_any_page(
    recorded_tab, hostile_server
):
    tab, _ = recorded_tab
    base_url, workspace_id = hostile_server
    tab.goto(f"{base_url}/?ws={workspace_id}")
    wait_for_run(tab)
    for title in [*PAGE_PATHS][1:]:
        open_page(tab, title)
        if title == "Distractors":  # "What flips" shows test ids once the slider has moved
            slider = threshold_slider(tab)
            slider.focus()
            slider.press("End")
            expect(tab.get_by_text("What flips (0)")).to_have_count(0, timeout=RUN_TIMEOUT_MS)
            wait_for_run(tab)
        assert_nothing_leaked(tab)


@pytest.mark.parametrize("address", [f"![x]({PROBE})", "[click me](https://example.invalid/phish)"])
def test_a_hostile_address_is_shown_as_text(recorded_tab, hostile_server, address):
    tab, _ = recorded_tab
    base_url, _ = hostile_server
    tab.goto(f"{base_url}/?ws={quote(address)}")
    wait_for_run(tab)
    expect(tab.get_by_test_id("stAlert").first).to_contain_text(
        "A new workspace was opened", timeout=RUN_TIMEOUT_MS
    )
    assert_nothing_leaked(tab)
