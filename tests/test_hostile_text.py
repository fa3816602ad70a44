"""Hostile user text through every dashboard page (AppTest): ids, labels, model names and the address
stay text — no Markdown link, image, HTML, line break or bidi override reaches the page."""

import re
from pathlib import Path

import numpy as np
import pytest
from test_pages import assert_ran, run_page, set_threshold_by_contamination

from core.io.parquet import write_embeddings
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.session.workspace import DatasetEntry, Workspace

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

PROBE = "http://127.0.0.1:8765/probe"  # nothing listens there; a request to it would be a leak
HOSTILE = [
    f"![img]({PROBE}/image.png)",
    "[phish](https://example.invalid/phish)",
    "see https://example.invalid/a or www.example.invalid or me@example.invalid",
    "<img src=x onerror=alert(1)><a href='https://example.invalid/h'>h</a>",
    f"two lines\n\n![i]({PROBE}/breakout.png)",
    "tick ` and `` back ```",
    "rtl \u202eevil\u202c end",
    ":red[alarm] :material/home: $x^2$ **bold** _it_ # head",
    "long " + "x" * 10_000,
]
# Markdown that would render as a link, image, HTML element, autolink or hidden text.
LEAK = re.compile(
    r"(?<!\\)!\[|(?<!\\)\]\(|(?<!\\)<[A-Za-z/!]|(?i:https?://|www\.)|@[A-Za-z]|[\u202a-\u202e\u2066-\u2069]"
)
PAGES = ("data", "embed", "map", "distractors", "neighbours", "evaluate", "text_image", "audit")


def write_hostile_workspace(folder: Path, home: Path | None = None) -> str:
    """A workspace on a Parquet whose ids and labels are all hostile strings, active and chosen."""
    rng = np.random.default_rng(0)
    classes = HOSTILE[:6]
    train_labels = [classes[i % len(classes)] for i in range(36)]
    test_labels = [classes[i % len(classes)] if i % 3 else DISTRACTOR for i in range(30)]
    centres = rng.normal(size=(len(classes) + 1, 16))
    label_rows = [
        classes.index(label) if label in classes else len(classes)
        for label in train_labels + test_labels
    ]
    vectors = centres[label_rows] + 0.3 * rng.normal(size=(len(label_rows), 16))
    ids = [f"{HOSTILE[i % len(HOSTILE)]} #{i}" for i in range(len(label_rows))]
    embeddings = Embeddings(
        np.array(ids, dtype=object),
        np.array([TRAIN] * len(train_labels) + [TEST] * len(test_labels)),
        np.array(train_labels + test_labels, dtype=object),
        (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32),
        f"model [x]({PROBE}/model)",
    )
    path = folder / "hostile.parquet"
    write_embeddings(path, embeddings)
    workspace = Workspace("hostile1", home)
    name = f"data ![d]({PROBE}/dataset.png)"
    workspace.add_dataset(DatasetEntry(name, str(path), "parquet"))
    workspace.set("dataset", name)
    return workspace.id


@pytest.fixture
def hostile_workspace(tmp_path) -> str:
    return write_hostile_workspace(tmp_path)


def shown_markdown(app) -> list[str]:
    """Every string the page hands to Streamlit's Markdown renderer, sidebar included."""
    texts = [
        element.value
        for kind in (
            "markdown",
            "caption",
            "warning",
            "info",
            "error",
            "success",
            "title",
            "subheader",
            "header",
        )
        for element in getattr(app, kind)
    ]
    texts += [metric.label for metric in app.metric]
    texts += [expander.label for expander in app.expander]
    texts += [image.caption for element in app.get("imgs") for image in element.proto.imgs]
    return texts


# the pages' own code spans: Markdown inside them is inert
CODE_SPAN = re.compile(r"(?<!\\)`[^`]*(?<!\\)`")


def assert_no_leak(app) -> None:
    leaks = [text for text in shown_markdown(app) if LEAK.search(CODE_SPAN.sub("", text))]
    assert not leaks, leaks[:3]


@pytest.mark.parametrize("page", PAGES)
def test_hostile_ids_labels_and_names_stay_text_on_every_page(page, hostile_workspace):
    app = run_page(page, hostile_workspace)
    assert not app.exception, [e.value for e in app.exception]
    assert_no_leak(app)
    if page == "distractors":  # "What flips" shows test ids as captions once the threshold moves
        set_threshold_by_contamination(app, 1.0)
        assert_ran(app)
        assert any("What flips" in subheader.value for subheader in app.subheader)
        assert_no_leak(app)


@pytest.mark.parametrize(
    "address", [f"![x]({PROBE})", "[click me](https://example.invalid/phish)", "\u202eab\nc"]
)
def test_a_hostile_workspace_address_is_named_as_text(address):
    app = run_page("data", address)
    assert not app.exception
    assert any("A new workspace was opened" in warning.value for warning in app.warning)
    assert_no_leak(app)
