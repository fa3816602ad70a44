"""First paint: a cold `streamlit run app.py` until Chromium shows the Data page, against a bare Streamlit page."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.browser import wait_for_run, wait_until_visible
from bench.report import Section, seconds, table
from bench.served import CHROMIUM, CHROMIUM_ARGS, serve
from bench.timing import median, median_ratio

ROUNDS = 3  # cold starts per contender: the target is on their median
TARGET_SECONDS = 3.0  # health check answered → Data page painted
BEFORE = "18.3, 18.7 and 25.0 s (three cold starts measured for issue #10, before the model left the first page)"
WAIT_MS = 180_000
BARE_TITLE = "Bare page"


def _bare_app(work: Path) -> Path:
    """The floor: a Streamlit script that only writes a title, served the same way."""
    script = work / "bare_app.py"
    script.write_text(f'import streamlit as st\n\nst.title("{BARE_TITLE}")\n', encoding="utf-8")
    return script


def _cold_start(browser, script: Path, title: str, home: Path) -> dict[str, float]:
    """Seconds to the health check, then from it to the title painted and to the run finished."""
    home.mkdir(parents=True)
    started = time.perf_counter()
    with serve(script, home, home / "streamlit.log") as base_url:
        healthy_at = time.perf_counter()
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        try:
            tab = context.new_page()
            tab.goto(base_url, wait_until="commit")
            main = tab.get_by_test_id("stMain")
            wait_until_visible(main.locator("h1").filter(has_text=title).first, WAIT_MS)
            painted_at = time.perf_counter()
            wait_for_run(tab, WAIT_MS)
            settled_at = time.perf_counter()
        finally:
            context.close()
    return {
        "health": healthy_at - started,
        "paint": painted_at - healthy_at,
        "settled": settled_at - healthy_at,
    }


def run(work: Path, quick: bool) -> Section:
    work.mkdir(parents=True, exist_ok=True)
    contenders = {
        "dashboard (app.py, Data page)": (Path("app.py"), "Data"),
        "bare Streamlit page": (_bare_app(work), BARE_TITLE),
    }
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for round_number in range(ROUNDS):
                order = list(contenders)[round_number % 2 :] + list(contenders)[: round_number % 2]
                for name in order:
                    script, title = contenders[name]
                    home = (
                        work
                        / f"round{round_number}-{'bare' if script.name == 'bare_app.py' else 'app'}"
                    )
                    timings[name].append(_cold_start(browser, script, title, home))
        finally:
            browser.close()

    dashboard, bare = (timings[name] for name in contenders)
    paint = median([t["paint"] for t in dashboard])
    rows = [
        [
            name,
            seconds(median([t["health"] for t in rounds])),
            seconds(median([t["paint"] for t in rounds])),
            seconds(median([t["settled"] for t in rounds])),
            ", ".join(f"{t['paint']:.2f}" for t in rounds),
        ]
        for name, rounds in timings.items()
    ]
    ratio = median_ratio([t["paint"] for t in dashboard], [t["paint"] for t in bare])
    section = Section("8. First paint: a cold start until the Data page shows", "8. First paint")
    section.add(
        f"Each round starts a fresh `streamlit run` with an empty `RETRIEVAL_LAB_HOME` (nothing cached, the demo "
        f"not yet written), waits for `/_stcore/health`, then opens the address in Debian's Chromium "
        f"(Playwright, already running). *Painted*: the page's title is visible; *settled*: the script run "
        f"has finished and no element is still loading. {ROUNDS} rounds, the two contenders alternating; "
        f"the bare page is Streamlit's own floor on this machine, served the same way.",
        table(
            [
                "Server",
                "start → healthy",
                "healthy → painted",
                "healthy → settled",
                "painted, each round (s)",
            ],
            rows,
        ),
        f"The dashboard paints in {ratio:.2f}× the bare page's time. Before: {BEFORE}.",
    )
    section.check(
        f"Data page painted ≤ {TARGET_SECONDS:.0f} s after the health check, cold start, median of {ROUNDS}",
        f"{seconds(paint)} (bare Streamlit {seconds(median([t['paint'] for t in bare]))}; before {BEFORE.split(' (')[0]})",
        paint <= TARGET_SECONDS,
    )
    return section
