"""AppTest runs on an embeddings Parquet: counts, no model note, nothing to embed, image-less cards, the folder tab, DBSCAN on request."""

import pytest
from test_pages import (
    assert_ran,
    displayed,
    metrics,
    run_page,
    set_threshold_by_contamination,
)

import core.analysis.pipeline
from bench.fixtures import retrieval_embeddings
from core.io.parquet import write_embeddings
from core.session.workspace import DatasetEntry, Workspace

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

N_TEST, N_CLASSES = 60, 20  # 3 train items per class, 30% of test are distractors
NO_CLIP = "cannot be loaded here"


@pytest.fixture
def vectors_file(tmp_path):
    path = tmp_path / "vectors.parquet"
    write_embeddings(path, retrieval_embeddings(N_TEST, n_classes=N_CLASSES))
    return path


@pytest.fixture
def parquet_workspace(vectors_file) -> str:
    workspace = Workspace("parquet1")
    workspace.add_dataset(DatasetEntry("vectors", str(vectors_file), "parquet"))
    workspace.set("dataset", "vectors")
    return workspace.id


def test_the_data_page_counts_a_parquet_per_split_and_class(parquet_workspace):
    app = run_page("data", parquet_workspace)
    assert_ran(app)
    assert {
        key: metrics(app)[key]
        for key in ("Train rows", "Train classes", "Test rows", "Rows refused")
    } == {
        "Train rows": str(3 * N_CLASSES),
        "Train classes": str(N_CLASSES),
        "Test rows": str(N_TEST),
        "Rows refused": "0",
    }
    assert any("18 of 60 test rows are distractors" in caption.value for caption in app.caption)
    counts = app.dataframe[0].value
    assert counts["rows"].sum() == 3 * N_CLASSES + N_TEST and set(counts["split"]) == {
        "train",
        "test",
    }


def test_vectors_that_came_with_the_data_need_no_model_note(parquet_workspace):
    # The tests run offline, so CLIP cannot load: an image dataset says so, a Parquet has no need to.
    images = run_page("distractors")
    assert any(NO_CLIP in info.value for info in images.info)
    app = run_page("distractors", parquet_workspace)
    assert_ran(app)
    assert not any(NO_CLIP in info.value for info in app.info)


def test_the_embed_page_says_the_vectors_are_there_and_offers_nothing_to_embed(parquet_workspace):
    app = run_page("embed", parquet_workspace)
    assert_ran(app)
    assert any("already there" in info.value for info in app.info)
    assert "Embed" not in {button.label for button in app.button}
    assert metrics(app)["Vectors"] == str(3 * N_CLASSES + N_TEST)


def test_image_less_cards_show_the_items_id_and_score(parquet_workspace):
    app = run_page("distractors", parquet_workspace)
    set_threshold_by_contamination(app, 1.0)
    assert_ran(app)
    cards = [
        displayed(markdown.value)
        for markdown in app.markdown
        if displayed(markdown.value).startswith("item-")
    ]
    assert cards and all(" · " in card for card in cards), cards
    assert not any("(no image)" in caption.value for caption in app.caption)


def test_the_folder_tab_opens_an_embeddings_parquet_under_the_data_root(
    workspace, vectors_file, monkeypatch
):
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(vectors_file.parent))
    app = run_page("data")
    next(box for box in app.text_input if box.label.startswith("Folder")).set_value(
        vectors_file.name
    ).run()
    app.button(key="data_open_folder").click().run()
    assert_ran(app)
    assert metrics(app)["Test rows"] == str(N_TEST)


def test_dbscan_runs_only_when_asked_and_once_per_settings(parquet_workspace, monkeypatch):
    calls = []
    dbscan_flags = core.analysis.pipeline.dbscan_flags
    monkeypatch.setattr(
        core.analysis.pipeline,
        "dbscan_flags",
        lambda *args: calls.append(args[2]) or dbscan_flags(*args),
    )
    app = run_page("distractors", parquet_workspace)
    assert_ran(app)
    assert calls == [] and "Flagged by DBSCAN" not in metrics(app)
    app.toggle(key="dbscan_run").set_value(True).run()
    assert len(calls) == 1 and "Flagged by DBSCAN" in metrics(app)
    set_threshold_by_contamination(app, 0.0)
    assert len(calls) == 1, "moving the threshold does not cluster again"
    next(s for s in app.slider if s.label.startswith("eps")).set_value(0.3).run()
    assert_ran(app)
    assert [config.eps for config in calls] == [0.15, 0.3]
