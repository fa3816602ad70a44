"""AppTest runs of every dashboard page on the built-in demo, with caches cleared between tests."""

import io
import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import core.maps.projection
from bench.fixtures import retrieval_embeddings
from core.analysis.loading import load_embeddings
from core.analysis.pipeline import analyse
from core.analysis.threshold_steps import on_grid
from core.display import ZERO_WIDTH_SPACE
from core.embedding.config import BASELINE_MODEL, EmbedConfig
from core.io.demo import write_demo_dataset
from core.io.parquet import read_embeddings_checked, write_embeddings
from core.prediction.config import PredictConfig
from core.prediction.placement import MAX_K
from core.prediction.predict import read_submission, submission_label, write_submission
from core.progress import Cancelled
from core.records import TEST, TRAIN, Embeddings
from core.session.models import LOADING, ModelShelf, chosen_model
from core.session.server import AnalysisKey, VectorsKey
from core.session.vectors import DASHBOARD_DEFAULTS, predict_config
from core.session.workspace import DatasetEntry, Workspace
from pages import state, ui

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 120  # per script run: the first one embeds the demo and tries to load CLIP


def run_page(name: str, workspace_id: str | None = None, **widgets) -> AppTest:
    """The page run on its own, as the navigation runs it, with widget values given by key."""
    app = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=SECONDS)
    app.session_state[state.APP_RAN] = True  # as app.py marks every session before its page runs
    if workspace_id:
        app.query_params["ws"] = workspace_id
    for key, value in widgets.items():
        app.session_state[key] = value
    return app.run()


def displayed(markdown: str) -> str:
    """What a reader sees of Markdown made by ui.plain: escapes resolved, zero-width spaces gone."""
    return re.sub(r"\\(.)", r"\1", markdown).replace(ZERO_WIDTH_SPACE, "")


def assert_ran(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]


def workspace_with(workspace_id: str, **settings) -> str:
    workspace = Workspace(workspace_id)
    for key, value in settings.items():
        workspace.set(key, value)
    return workspace.id


@pytest.fixture
def tiny_clip_dir(tiny_clip_dir, monkeypatch) -> Path:
    """The tiny CLIP under the data root: the only folders a served dashboard loads models from."""
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(tiny_clip_dir.parent))
    return tiny_clip_dir


@pytest.fixture
def clip_workspace(tiny_clip_dir) -> str:
    """A workspace whose model is the tiny CLIP, so text features work offline."""
    return workspace_with("tiny-clip", embed_config={"model": str(tiny_clip_dir)})


@pytest.fixture
def unlabelled_parquet_workspace(tmp_path) -> str:
    """A workspace on a Parquet file of random vectors whose test rows have no labels (and no images)."""
    rng = np.random.default_rng(0)
    n_train, n_test = 24, 30
    vectors = rng.normal(size=(n_train + n_test, 16)).astype(np.float32)
    embeddings = Embeddings(
        np.array([f"item{i}.jpg" for i in range(n_train + n_test)]),
        np.array([TRAIN] * n_train + [TEST] * n_test),
        np.array([f"class{i % 6}" for i in range(n_train)] + [None] * n_test, dtype=object),
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        "random vectors",
    )
    return parquet_workspace(
        "unlabelled", tmp_path / "unlabelled.parquet", embeddings, "unlabelled vectors"
    )


def parquet_workspace(
    workspace_id: str, path: Path, embeddings: Embeddings, name: str = "vectors"
) -> str:
    """A workspace whose active dataset is `embeddings`, written to `path` as an embeddings Parquet."""
    write_embeddings(path, embeddings)
    workspace = Workspace(workspace_id)
    workspace.add_dataset(DatasetEntry(name, str(path), "parquet"))
    workspace.set("dataset", name)
    return workspace.id


def png_bytes(colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def neighbour_cards(app: AppTest) -> list:
    return [block for block in app.container if (block.key or "").startswith("neighbour_card_")]


def predicted_labels(app: AppTest) -> list[str]:
    """The Neighbours page's predicted labels as a reader sees them ("1. a · 2. b …"), in order."""
    shown = displayed(
        next(m.value for m in app.markdown if m.value.startswith("**Predicted labels:**"))
    )
    items = shown.removeprefix("**Predicted labels:** ").split(" · ")
    assert [item.split(". ", 1)[0] for item in items] == [
        str(rank) for rank in range(1, len(items) + 1)
    ]
    return [item.split(". ", 1)[1] for item in items]


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


# Four digits or more standing alone: a count written without thousands separators (not a decimal's digits,
# an id's "item-1234" or a separated "1,234").
BARE_COUNT = re.compile(r"(?<![\d.,\-])\d{4,}(?![\d.,])")


def shown_texts(app: AppTest) -> list[str]:
    """The words and figures a page shows: metrics, titles, headers, captions, Markdown, notices and expanders."""
    elements = [*app.title, *app.subheader, *app.caption, *app.markdown, *app.info, *app.warning]
    return [
        *(element.value for element in elements),
        *(text for metric in app.metric for text in (metric.label, metric.value)),
        *(expander.label for expander in app.expander),
    ]


def test_every_count_of_a_thousand_or_more_is_shown_with_thousands_separators(tmp_path):
    embeddings = retrieval_embeddings(1500, 400)  # 1,200 train images in 400 classes, 1,500 test
    workspace_id = parquet_workspace("counts1", tmp_path / "counts.parquet", embeddings)
    selection = {"points": [{"customdata": row} for row in range(1001)]}
    pages = {
        "data": {},
        "embed": {},
        "map": {"map_method": "pca", "map_chart": {"selection": selection}},
        "distractors": {},
        "neighbours": {},
        "evaluate": {},
        "audit": {},
        "text_image": {},
    }
    shown = {}
    for page, widgets in pages.items():
        app = run_page(page, workspace_id, **widgets)
        assert_ran(app)
        assert not [text for text in shown_texts(app) if BARE_COUNT.search(text)], page
        shown[page] = app
    data, evaluate = metrics(shown["data"]), metrics(shown["evaluate"])
    assert (data["Train rows"], data["Test rows"]) == ("1,200", "1,500")
    assert evaluate["Test images"] == "1,500" and metrics(shown["embed"])["Vectors"] == "2,700"
    assert [header.value for header in shown["map"].subheader] == ["1,001 selected"]


def test_map_methods_are_named_as_people_write_them(monkeypatch):
    progress = []
    real = state.finished

    def finished(start, what):
        if not what.startswith("Computing the"):
            return real(start, what)
        progress.append(what)  # the words over the projection's progress bar; no need to compute it
        st.stop()

    monkeypatch.setattr(state, "finished", finished)
    for method in ("umap", "tsne", "pca"):
        app = run_page("map", map_method=method)
        assert_ran(app)
        assert app.button_group(key="map_method").options == ["UMAP", "t-SNE", "PCA"]
    assert progress == [
        f"Computing the {name} map of 172 points" for name in ("UMAP", "t-SNE", "PCA")
    ]
    evaluate = run_page("evaluate")
    shared = next(group for group in evaluate.button_group if group.label == "Map in the report")
    assert shared.options == ["UMAP", "t-SNE", "PCA"]


def test_map_selection_shows_thumbnails_ids_and_labels():
    app = run_page("map", map_method="pca")
    assert_ran(app)
    assert any("Select points" in info.value for info in app.info)
    app.session_state["map_chart"] = {
        "selection": {
            "points": [{"customdata": 3}, {"customdata": [50]}, {"customdata": 3}],
            "point_indices": [],
            "box": [],
            "lasso": [],
        }
    }
    app.run()
    assert_ran(app)
    captions = [displayed(caption) for image in app.image for caption in image.captions]
    assert len(captions) == 2
    selected = app.dataframe[0].value
    assert list(selected.index) == [3, 50]
    for caption, (_, point) in zip(captions, selected.iterrows()):
        assert caption.startswith(f"{point['id']} · {point['split']} · ")
    assert selected.loc[3, "split"] == TRAIN and selected.loc[3, "label"] in captions[0]


def test_map_gallery_is_capped_but_the_table_lists_the_whole_selection():
    selection = {
        "points": [{"customdata": row} for row in range(45)],
        "point_indices": [],
        "box": [],
        "lasso": [],
    }
    app = run_page("map", map_method="pca", map_colour="flag", map_chart={"selection": selection})
    assert_ran(app)
    assert len(app.image) == 40
    assert len(app.dataframe[0].value) == 45
    assert any("first 40 images" in caption.value for caption in app.caption)


def test_neighbours_shows_five_cards_and_a_verdict_that_follows_the_threshold():
    # A 30% share flagged: the demo's first test images then fall on both sides of the threshold.
    workspace_id = workspace_with("verdicts", predict_config={"contamination": 0.3})
    verdicts, explained = set(), False
    for row in range(12):
        app = run_page("neighbours", workspace_id, neighbours_test_row=row)
        assert_ran(app)
        cards = neighbour_cards(app)
        assert len(cards) == 5
        assert all(len(card.image) == 1 for card in cards)
        score = float(metrics(app)["Distractor score"])
        similarities = [
            float(card.caption[0].value.split("cosine ")[1].split(" ")[0]) for card in cards
        ]
        assert similarities == sorted(similarities, reverse=True) and similarities[
            0
        ] == pytest.approx(score, abs=1e-3)
        predicted = predicted_labels(app)
        flagged = bool(app.warning)
        assert flagged != bool(app.success)
        assert (predicted[0] == "-1") == flagged
        assert len(predicted) == 5 and predicted.count("-1") <= 1
        went = next(displayed(m.value) for m in app.markdown if m.value.startswith("**Where"))
        assert went.startswith(
            f'**Where "-1" went:** rank {predicted.index("-1") + 1}'
            if "-1" in predicted
            else '**Where "-1" went:** nowhere'
        )
        assert ("below the threshold" in went) == flagged
        if (
            '("optimal" placement)' in went
        ):  # its reasons carry the share and the chance with their spread
            assert re.search(
                r"estimated distractor share of \d+% \(\d+%–\d+%\).* distractor at \d+\.\d% "
                r"\(\d+\.\d%–\d+\.\d% over class bootstraps of train\)",
                went,
            )
            explained = True
        verdicts.add(flagged)
        if verdicts == {True, False} and explained:
            break
    assert verdicts == {True, False}, (
        "the demo's first test images include distractors and known classes"
    )
    assert explained, "a kept image's -1 placed by the optimal rule is explained"


def test_neighbours_verdict_matches_the_submission_for_the_item_nearest_the_threshold(tmp_path):
    # The kept item scoring closest above the dashboard's threshold (the default rule's, on the
    # slider's grid): a fresh one-row search that rounds a bit lower must not flag it here.
    analysis = analyse(
        load_embeddings(
            write_demo_dataset(tmp_path / "demo"), EmbedConfig(model=BASELINE_MODEL)
        ).embeddings,
        DASHBOARD_DEFAULTS,
    )
    threshold = on_grid(analysis.threshold)
    kept = np.flatnonzero(analysis.scores >= threshold)
    row = int(kept[np.argmin(analysis.scores[kept])])
    app = run_page("neighbours", neighbours_test_row=row)
    assert_ran(app)
    assert app.success and not app.warning
    assert predicted_labels(app) == analysis.predictions(threshold)[row]
    submission = tmp_path / "submission.csv"
    write_submission(submission, list(analysis.test.ids), analysis.predictions(threshold))
    assert (
        list(map(submission_label, predicted_labels(app)))
        == read_submission(submission)[analysis.test.ids[row]]
    )


def test_neighbours_leaves_minus_one_out_where_it_gains_nothing_and_says_why(tmp_path):
    # Three clean images a class: the placement model sees true labels at rank 1 only, so a "-1" at rank 2
    # costs a known item nothing and gains only the item's tiny distractor chance.
    embeddings = retrieval_embeddings(300, 60)
    workspace_id = parquet_workspace("ties1", tmp_path / "ties.parquet", embeddings)
    analysis = analyse(embeddings)
    threshold = on_grid(analysis.threshold)
    positions = analysis.positions(threshold)
    surest = int(np.argmax(analysis.scores))
    doubted = int(np.flatnonzero(positions > 1)[0])
    app = run_page("neighbours", workspace_id, neighbours_test_row=surest)
    assert_ran(app)
    assert "-1" not in predicted_labels(app)
    went = next(displayed(m.value) for m in app.markdown if m.value.startswith("**Where"))
    assert went.startswith('**Where "-1" went:** nowhere, as no rank gains 0.001 expected AP@5'), (
        went
    )
    assert "distractor at 0.0%" in went
    app = run_page("neighbours", workspace_id, neighbours_test_row=doubted)
    assert_ran(app)
    rank = predicted_labels(app).index("-1") + 1
    went = next(displayed(m.value) for m in app.markdown if m.value.startswith("**Where"))
    assert went.startswith(f'**Where "-1" went:** rank {rank}, where it gains the most'), went
    assert float(re.search(r"over leaving it out, \+(\d\.\d+)", went)[1]) >= 0.001


def test_neighbours_searches_an_uploaded_image_and_refuses_a_broken_one():
    app = run_page("neighbours", neighbours_query_kind="An uploaded image")
    assert_ran(app)
    app.file_uploader(key="neighbours_upload").upload("query.png", png_bytes(), "image/png").run()
    assert_ran(app)
    assert len(neighbour_cards(app)) == 5
    app.file_uploader(key="neighbours_upload").set_value(
        ("broken.png", b"\x89PNG\r\n\x1a\n broken", "image/png")
    ).run()
    assert not app.exception
    assert [error.value for error in app.error] and "broken.png" in displayed(app.error[0].value)
    assert not neighbour_cards(app)


def test_neighbours_explains_that_the_baseline_cannot_search_by_text():
    app = run_page("neighbours", neighbours_query_kind="A text")
    assert_ran(app)
    assert any("cannot search by text" in info.value for info in app.info)
    told = [
        element.value
        for element in [*app.info, *app.markdown]
        if "save_pretrained" in element.value
    ]
    assert len(told) == 1  # how to get CLIP, said once
    assert not neighbour_cards(app)


def test_neighbours_searches_by_text_with_clip(clip_workspace):
    app = run_page("neighbours", clip_workspace, neighbours_query_kind="A text")
    assert_ran(app)
    assert len(neighbour_cards(app)) == 5


def test_evaluate_scores_the_demo_and_offers_the_downloads():
    app = run_page("evaluate")
    assert_ran(app)
    shown = metrics(app)
    assert 0.0 <= float(shown["MAP@5"]) <= 1.0
    assert int(shown["Test images"]) > int(shown["Flagged as distractors"]) > 0
    # Flagged items are the ones with "-1" first; their count is stated apart from the class bars.
    stated = f'"-1" first: {int(shown["Flagged as distractors"]):,} of {int(shown["Test images"]):,} test images'
    assert any(caption.value.startswith(stated) for caption in app.caption)
    labels = [button.label for button in app.get("download_button")]
    assert {"Submission CSV", "Embeddings (Parquet)", "Scores (JSON)"} <= set(labels)
    # every test image not flagged is counted once under the class it heads
    classes = next(frame.value for frame in app.dataframe if "class" in frame.value)
    assert classes["test images"].sum() == int(shown["Test images"]) - int(
        shown["Flagged as distractors"]
    )
    assert classes["test images"].is_monotonic_decreasing


def test_evaluate_compares_chosen_methods():
    app = run_page("evaluate", evaluate_methods=["cosine", "linear"])
    app.button[0].click().run()
    assert_ran(app)
    table = app.dataframe[-1].value
    assert table["method"].tolist() == ["cosine kNN (pre-trained)", "linear probe"]
    assert table["MAP@5"].between(0, 1).all()
    assert any("plain cosine kNN" in markdown.value for markdown in app.markdown)
    assert {"Comparison (text)", "Comparison (JSON)"} <= {
        button.label for button in app.get("download_button")
    }


def test_pages_without_test_truth_or_images_still_work(unlabelled_parquet_workspace):
    app = run_page("evaluate", unlabelled_parquet_workspace)
    assert_ran(app)
    assert any(
        "need test truth: 30 of 30 test items have no label: give every test row a label in the "
        "Parquet file's label column" in displayed(info.value)
        for info in app.info
    )
    assert "MAP@5" not in metrics(app) and metrics(app)["Test images"] == "30"
    app = run_page("neighbours", unlabelled_parquet_workspace)
    assert_ran(app)
    assert len(neighbour_cards(app)) == 5 and not app.image
    selection = {"points": [{"customdata": 0}], "point_indices": [], "box": [], "lasso": []}
    app = run_page(
        "map",
        unlabelled_parquet_workspace,
        map_method="pca",
        map_colour="label",
        map_chart={"selection": selection},
    )
    assert_ran(app)
    # the card of an image-less item
    assert any(displayed(markdown.value).startswith("item") for markdown in app.markdown)


def test_text_image_explains_that_the_baseline_has_no_text_tower():
    app = run_page("text_image")
    assert_ran(app)
    assert any("cannot score texts against images" in info.value for info in app.info)
    assert not app.dataframe


def test_text_image_scores_class_prompts_and_typed_texts_with_clip(clip_workspace):
    app = run_page("text_image", clip_workspace)
    assert_ran(app)
    shown = metrics(app)
    assert shown["Images"] == "16" and int(shown["Texts"]) >= 5
    assert shown["Wall time"].endswith(" s") and shown["Peak memory"].endswith(" MiB")
    best = app.dataframe[0].value
    assert len(best) == 16
    assert best["clip_score"].between(0, 100).all() and best["probability"].between(0, 1).all()
    assert {"results.csv", "stats.log"} <= {button.label for button in app.get("download_button")}

    app.session_state["text_source"] = "Typed"
    app.run()
    app.text_area(key="text_typed").input("a photo of a red circle\na photo of a blue square").run()
    assert_ran(app)
    assert metrics(app)["Texts"] == "2"
    best = app.dataframe[0].value
    assert set(best["zero-shot text"]) <= {"a photo of a red circle", "a photo of a blue square"}
    assert best["probability"].between(0.5, 1).all()  # the best of two texts holds at least half


def test_an_ensemble_of_the_baseline_and_a_clip_model_is_analysed(tiny_clip_dir):
    workspace_id = workspace_with(
        "ensemble1",
        embed_config={"model": "baseline"},
        ensemble=[
            {"model": str(tiny_clip_dir), "weight": 0.5},
            {"model": "no-such-org/no-such-clip", "weight": 1.0},
        ],
    )
    app = run_page("embed", workspace_id)
    assert not app.exception, [e.value for e in app.exception]
    assert any("Model identity: ensemble(" in displayed(caption.value) for caption in app.caption)
    assert any("no-such-org/no-such-clip" in displayed(warning.value) for warning in app.warning)
    # the ensemble's vectors analysed, with the rule of its threshold
    app = run_page("distractors", workspace_id)
    assert_ran(app)
    assert any(
        "Default rule: validation on train" in displayed(caption.value) for caption in app.caption
    ), "the dashboard's default threshold is --auto's"


def test_the_ensemble_weight_search_shows_every_step(tiny_clip_dir):
    workspace_id = workspace_with(
        "ensemble2",
        embed_config={"model": "baseline"},
        ensemble=[{"model": str(tiny_clip_dir), "weight": 0.5}],
    )
    app = run_page("embed", workspace_id)
    next(
        button for button in app.button if button.label.startswith("Search the weights")
    ).click().run()
    assert not app.exception, [e.value for e in app.exception]
    steps = app.code[0].value.splitlines()
    assert (
        steps[0].split()[:3] == ["step", "model", "tried"]
        and len(steps) >= 4
        and steps[-1].startswith("chosen")
    )
    assert len(Workspace(workspace_id).get("ensemble")) == 1


def live_slider(app: AppTest) -> dict:
    """The Distractors page's live slider as the browser gets it: its position and every figure at every position."""
    (element,) = app.get("bidi_component")
    return json.loads(element.proto.json)


def slider_value(app: AppTest) -> float:
    return live_slider(app)["value"]


def slider_metrics(app: AppTest) -> dict[str, str]:
    """Label → the text the browser shows under the live slider at its position."""
    panel = live_slider(app)
    at = panel["thresholds"].index(f"{panel['value']:.{panel['decimals']}f}")
    return {metric["label"]: metric["shown"][at] for row in panel["rows"] for metric in row}


def set_threshold_by_contamination(app: AppTest, share: float) -> float:
    """The Distractors page's "Target contamination" box set to `share`: the threshold the slider then shows."""
    next(box for box in app.number_input if box.label == "Target contamination").set_value(share)
    next(button for button in app.button if button.label == "Set threshold").click().run()
    return slider_value(app)


def test_data_page_counts_the_demo_and_shows_its_gallery():
    app = run_page("data")
    assert_ran(app)
    values = metrics(app)
    assert (values["Train images"], values["Train classes"], values["Files refused"]) == (
        "36",
        "12",
        "0",
    )
    assert len(app.image) == 24  # the first gallery page


def demo_zip(tmp_path) -> bytes:
    """The demo as a zip, plus a traversal entry and a file that is not an image."""
    import zipfile

    root = write_demo_dataset(tmp_path / "zipped")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*.jpg")):
            archive.write(path, f"shapes/{path.relative_to(root)}")
        archive.writestr("../escape.jpg", b"outside")
        archive.writestr("shapes/train/red circle/notes.jpg", b"not an image")
    return buffer.getvalue()


def test_data_page_adds_an_uploaded_zip_and_names_every_refused_file(tmp_path):
    app = run_page("data", "upload1")
    app.file_uploader(key="data_upload_0").upload(
        "shapes.zip", demo_zip(tmp_path), "application/zip"
    ).run()
    app.text_input[0].set_value("uploaded shapes")
    next(button for button in app.button if button.label == "Add upload").click().run()
    assert_ran(app)
    assert app.selectbox[0].value == "uploaded shapes"
    refused = app.dataframe[-1].value
    reasons = dict(zip(refused["file"], refused["reason"]))
    assert any("escape.jpg" in name for name in reasons) and any(
        "notes.jpg" in name for name in reasons
    )
    assert metrics(app)["Train images"] == "36"  # the non-image beside them is refused, not counted
    assert Workspace("upload1").get("dataset") == "uploaded shapes"


def test_data_page_opens_only_folders_under_the_data_root(tmp_path, monkeypatch):
    root = tmp_path / "data-root"
    write_demo_dataset(root)
    monkeypatch.setenv("RETRIEVAL_LAB_DATA_ROOT", str(root))
    app = run_page("data", "folder1")
    app.text_input[1].set_value("../../etc").run()
    app.button(key="data_open_folder").click().run()
    assert "outside the data root" in app.error[0].value
    app.text_input[1].set_value("demo-shapes").run()
    app.button(key="data_open_folder").click().run()
    assert_ran(app)
    assert app.selectbox[0].value == "demo-shapes"


def test_the_folder_tab_names_its_button_by_what_was_given():
    app = run_page("data", "folder2")
    field = next(box for box in app.text_input if box.label.startswith("Folder or .parquet"))
    for given, action in [
        ("", "Open folder"),
        ("demo-shapes", "Open folder"),
        ("runs/vectors.parquet", "Open Parquet file"),
        ("VECTORS.PARQUET ", "Open Parquet file"),
    ]:
        field.set_value(given).run()
        assert app.button(key="data_open_folder").label == action, given


def test_embed_page_counts_computed_then_cached_vectors():
    first = metrics(run_page("embed"))
    assert int(first["Vectors"]) == 172 and int(first["Computed"]) > 0
    st.cache_resource.clear()  # a server restart: the SQLite cache still holds every vector
    second = metrics(run_page("embed"))
    assert (second["Computed"], second["From cache"]) == ("0", first["Vectors"])


def test_the_weight_search_saves_each_weight_on_its_own_model_when_a_member_cannot_load(
    tiny_clip_dir,
):
    # The member that cannot load comes first: the searched weights belong to the members that loaded.
    workspace_id = workspace_with(
        "ensemble3",
        embed_config={"model": "baseline"},
        ensemble=[
            {"model": "no-such-org/no-such-clip", "weight": 1.0},
            {"model": str(tiny_clip_dir), "weight": 0.5},
        ],
    )
    app = run_page("embed", workspace_id)
    next(
        button for button in app.button if button.label.startswith("Search the weights")
    ).click().run()
    assert not app.exception, [e.value for e in app.exception]
    chosen = app.code[0].value.splitlines()[-1]  # "chosen (mode): weights (main, member), metric m"
    main_weight, member_weight = (
        float(w) for w in chosen.split("weights (")[1].split(")")[0].split(", ")
    )
    saved = {
        member["model"]: member["weight"] for member in Workspace(workspace_id).get("ensemble")
    }
    assert saved.keys() == {"no-such-org/no-such-clip", str(tiny_clip_dir)}
    assert saved["no-such-org/no-such-clip"] == 1.0, "a member left out keeps its saved weight"
    assert saved[str(tiny_clip_dir)] == pytest.approx(member_weight / main_weight, rel=0.01)


def test_evaluate_sets_k_and_the_mean_score_for_every_page():
    app = run_page("evaluate", "predict1")
    assert_ran(app)
    assert "MAP@5" in metrics(app)
    app.number_input(key="evaluate_k").set_value(3).run()
    app.radio(key="evaluate_score_mode").set_value("mean").run()
    assert_ran(app)
    assert "MAP@3" in metrics(app) and "MAP@5" not in metrics(app)
    assert Workspace("predict1").get_config("predict_config", PredictConfig) == replace(
        DASHBOARD_DEFAULTS, k=3, score_mode="mean"
    )
    neighbours = run_page("neighbours", "predict1")
    assert_ran(neighbours)
    assert len(neighbour_cards(neighbours)) == 3
    assert "score mode: mean" in metrics_help(neighbours, "Distractor score")


def test_a_saved_k_above_the_bound_is_clamped_with_a_note_on_every_page():
    workspace_with("k-too-large", predict_config={"k": MAX_K + 1})
    for page in ("evaluate", "distractors", "neighbours"):
        app = run_page(page, "k-too-large")
        assert_ran(app)
        notes = [displayed(caption.value) for caption in app.caption]
        assert any(f"k={MAX_K + 1} was saved" in note for note in notes), (page, notes)
    evaluate = run_page("evaluate", "k-too-large")
    assert evaluate.number_input(key="evaluate_k").max == MAX_K
    assert evaluate.number_input(key="evaluate_k").value == MAX_K
    assert f"MAP@{MAX_K}" in metrics(evaluate)


def per_image_table(app):
    return next(frame.value for frame in app.dataframe if "predictions" in frame.value)


def test_evaluate_sends_the_per_image_table_only_when_asked_and_a_page_at_a_time(tmp_path):
    from bench.fixtures import retrieval_embeddings

    embeddings = retrieval_embeddings(1_200, n_classes=50)
    workspace_id = parquet_workspace("table", tmp_path / "table.parquet", embeddings)
    app = run_page("evaluate", workspace_id)
    assert_ran(app)
    assert not [frame for frame in app.dataframe if "predictions" in frame.value]
    app.toggle(key="evaluate_table").set_value(True).run()
    first = per_image_table(app)
    assert len(first) == ui.TABLE_PAGE_ROWS
    app.number_input(key="evaluate_table_page").set_value(3).run()
    last = per_image_table(app)
    test_ids = list(embeddings.ids[embeddings.splits == TEST])
    assert list(first["id"]) + list(last["id"]) == test_ids[: ui.TABLE_PAGE_ROWS] + test_ids[1_000:]


def test_a_k_other_than_five_names_every_map_figure_by_its_k(injected_workspace):
    workspace_id, _ = injected_workspace
    Workspace(workspace_id).set("predict_config", {"k": 3})
    distractors = run_page("distractors", workspace_id, dbscan_run=True)
    audit = run_page("audit", workspace_id)
    audit.button(key="audit_measure").click().run()
    evaluate = run_page("evaluate", workspace_id)
    for page, app in {"distractors": distractors, "audit": audit, "evaluate": evaluate}.items():
        assert_ran(app)
        labels = list(metrics(app))
        assert any(label.startswith("MAP@3") for label in labels), (page, labels)
        assert not any("MAP@5" in text for text in shown_texts(app)), page


def metrics_help(app: AppTest, label: str) -> str:
    return next(metric.help for metric in app.metric if metric.label == label)


def test_evaluate_sets_where_minus_one_goes_for_every_page():
    app = run_page("evaluate", "placement2")
    assert_ran(app)
    chosen_by_validation = metrics(app)["MAP@5"]
    app.radio(key="evaluate_placement").set_value("first").run()
    assert_ran(app)
    assert Workspace("placement2").get_config("predict_config", PredictConfig) == replace(
        DASHBOARD_DEFAULTS, placement="first"
    )
    assert any("Placement: **first** (asked for)" in caption.value for caption in app.caption)
    distractors = run_page("distractors", "placement2")
    assert_ran(distractors)
    shown = slider_metrics(distractors)
    assert shown["MAP@5"] == shown['MAP@5, "-1" first'] != shown['MAP@5, "-1" optimal']
    assert any(
        'Where "-1" goes: **first** (asked for)' in caption.value for caption in distractors.caption
    )
    assert metrics(app)["MAP@5"] != chosen_by_validation  # the demo's validation picks optimal


def test_distractors_page_renders_from_the_background_analysis_and_a_restart_reads_its_searches(
    workspace, monkeypatch
):
    import core.analysis.pipeline as pipeline

    searches = []
    search_and_rank = pipeline.search_and_rank
    monkeypatch.setattr(
        pipeline,
        "search_and_rank",
        lambda *args, **kwargs: searches.append(1) or search_and_rank(*args, **kwargs),
    )
    app = run_page("distractors")
    assert_ran(app)
    assert "Threshold" in slider_metrics(app)
    assert len(searches) == 1 and len(list((workspace / "analyses").glob("*.npz"))) == 1
    st.cache_resource.clear()  # as a server restart forgets every analysis in memory
    again = run_page("distractors")
    assert_ran(again)
    assert len(searches) == 1
    assert live_slider(again) == live_slider(app)


def test_a_cancelled_background_job_is_said_so_and_starts_again_on_request():
    def cancelled(watch):
        raise Cancelled("cancelled during a test")

    state.server().analyses.start("test job", cancelled).wait(10)

    def page():
        import streamlit as st

        from pages import state

        def start(again):
            return state.server().analyses.start("test job", lambda watch: "finished anew", again)

        st.write(state.finished(start, "Testing <b>"))

    app = AppTest.from_function(page, default_timeout=SECONDS).run()
    assert not app.exception
    assert [displayed(warning.value) for warning in app.warning] == ["Testing <b> was cancelled."]
    assert not app.markdown
    app.button(key="again: Testing <b>").click().run()
    assert not app.exception and not app.warning
    assert [markdown.value for markdown in app.markdown] == ["finished anew"]


def eventually(look):
    """What `look()` returns once it is something, looking again for up to SECONDS; else None.

    The background work starts in threads, once the script run that asked for it has ended."""
    deadline = time.monotonic() + SECONDS
    while (found := look()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def started_analysis(ws: Workspace):
    """The background analysis of the workspace's active Parquet, once started; None if it does not start."""
    entry = state.server().datasets(ws).active()
    vectors = VectorsKey(entry.source, read_embeddings_checked(entry.source)[0].model)
    key = AnalysisKey(vectors, predict_config(ws))
    return eventually(lambda: state.server().analyses.get(key))


class NeverLoadingShelf(ModelShelf):
    """A model shelf whose loads wait until the test lets them finish."""

    def __init__(self, release: threading.Event):
        super().__init__(lambda config: release.wait(SECONDS) and None)


def test_a_parquet_dataset_is_analysed_without_waiting_for_the_model(
    unlabelled_parquet_workspace, monkeypatch
):
    release = threading.Event()
    shelf = NeverLoadingShelf(release)
    monkeypatch.setattr(state.server(), "models", shelf)
    try:
        ws = Workspace(unlabelled_parquet_workspace)
        # The Data page's run ends by starting the analysis of an active Parquet in the background.
        state.start_background_work(ws)
        started = started_analysis(ws)
        assert started is not None and started.wait(SECONDS)
        app = run_page("distractors", unlabelled_parquet_workspace)
        assert_ran(app)
        assert slider_metrics(app)["Flagged as distractors"]
        # the vectors came with the data: nothing waited for it
        assert shelf.state(chosen_model(ws)) == LOADING
    finally:
        release.set()


def test_the_sidebar_says_a_parquet_needs_a_model_for_queries_only(unlabelled_parquet_workspace):
    assert (
        state.server()
        .model_status(Workspace(unlabelled_parquet_workspace))
        .endswith("for queries only: the dataset's vectors came with its file")
    )
    assert "came with its file" not in state.server().model_status(
        Workspace(workspace_with("demo-only"))
    )


def test_a_map_rerun_finds_its_projection_without_hashing_the_vectors_again(monkeypatch):
    hashed = []
    real_key = core.maps.projection.projection_key
    monkeypatch.setattr(
        core.maps.projection, "projection_key", lambda *args: hashed.append(1) or real_key(*args)
    )
    app = run_page("map", map_method="pca")
    assert_ran(app)
    app.run()
    assert_ran(app)
    assert len(hashed) == 1
