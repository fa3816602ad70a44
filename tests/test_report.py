"""The shared HTML report (core/report): its content, escaping of hostile text, its size bound, and the report command."""

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_exports import offered_downloads
from test_pages import assert_ran, run_page

from core.__main__ import main
from core.analysis.loading import LoadedEmbeddings
from core.analysis.pipeline import analyse
from core.display import ELLIPSIS
from core.io.parquet import write_embeddings
from core.maps.projection import ProjectionConfig, project
from core.prediction.config import PredictConfig
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.report.config import MAX_CARDS_PER_KIND, ReportConfig
from core.report.html import MAP_POINT_LIMIT, MAX_REPORT_BYTES, THUMBNAIL_EDGE, report_html

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "[a](javascript:x)",
    "</script><script>alert(2)</script>",
    "<a href='https://example.invalid/h'>h</a>",
    'rtl \u202eevil\u202c & "quoted"',
]
DATA_URI = "data:image/jpeg;base64,"
PLOTLY_BANNER = "* plotly.js v"  # the licence header that opens the inlined library


def clustered(
    n_classes=6,
    per_class=3,
    n_test=40,
    labels=None,
    ids=None,
    truth=True,
    model="test-model",
    seed=0,
) -> Embeddings:
    """Train items in `n_classes` tight clusters; test items from those classes and, one in four, from new ones."""
    rng = np.random.default_rng(seed)
    labels = labels or [f"class {i}" for i in range(n_classes)]
    centres = rng.normal(size=(n_classes + 3, 16))
    train_rows = np.repeat(np.arange(n_classes), per_class)
    test_rows = np.where(
        np.arange(n_test) % 4 == 0, n_classes + np.arange(n_test) % 3, np.arange(n_test) % n_classes
    )
    rows = np.concatenate([train_rows, test_rows])
    vectors = centres[rows] + 0.25 * rng.normal(size=(len(rows), 16))
    test_labels = (
        [labels[row] if row < n_classes else DISTRACTOR for row in test_rows]
        if truth
        else [None] * n_test
    )
    ids = ids or [f"item_{i}.png" for i in range(len(rows))]
    return Embeddings(
        np.array(ids[: len(rows)], dtype=object),
        np.array([TRAIN] * len(train_rows) + [TEST] * n_test),
        np.array([labels[row] for row in train_rows] + test_labels, dtype=object),
        (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32),
        model,
    )


def noise_image(path: Path, size=(200, 160), seed=0) -> Path:
    """Pure noise: the image that compresses worst, so thumbnails of it bound their size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def report_of(
    embeddings, images=None, config=ReportConfig(map_method="pca"), predict=PredictConfig(), **given
) -> str:
    analysis = analyse(embeddings, predict)
    projection = project(
        analysis.train.vectors, analysis.test.vectors, ProjectionConfig(method=config.map_method)
    )
    return report_html(
        LoadedEmbeddings(embeddings, []),
        analysis,
        projection,
        images=images,
        config=config,
        **given,
    )


class Markup(HTMLParser):
    """Every element of a page outside its scripts, with its attributes, and the text between them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.texts, self.scripts = [], [], 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.scripts += tag == "script"

    def handle_data(self, data):
        if not self.tags or self.tags[-1][0] != "script":
            self.texts.append(data)


@pytest.fixture(scope="module")
def images_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-images")
    return [noise_image(folder / f"noise_{i}.png", seed=i) for i in range(6)]


def test_a_report_holds_the_summary_metrics_figures_and_neighbour_cards(images_folder):
    embeddings = clustered()
    images = {
        item_id: images_folder[i % len(images_folder)] for i, item_id in enumerate(embeddings.ids)
    }
    analysis = analyse(embeddings)
    # test "images" that are not images
    images.update(dict.fromkeys(analysis.test.ids, Path(__file__)))
    page = report_of(
        embeddings, images, ReportConfig(map_method="pca", cards=MAX_CARDS_PER_KIND), name="shapes"
    )
    shown = " ".join(Markup(page).texts)

    assert "18" in shown and "40" in shown and "6 classes" in shown  # items per split and classes
    report = analysis.report()
    assert f"{report.measured_map:.4f}" in shown and f"{analysis.threshold:.4f}" in shown
    assert f"{report.flagged:,} of 40" in shown and analysis.threshold_source in shown
    share_low, share_high = report.estimated_distractor_share_interval
    map_low, map_high = report.expected_map_interval
    assert (
        f"90% interval {share_low:.1%}–{share_high:.1%}, where the true share should fall" in shown
    )
    assert (
        f"90% interval {map_low:.4f}–{map_high:.4f}, where the measured MAP@5 should fall" in shown
    )
    for figure in ("contamination", "scores", "map-at-k", "map"):
        assert f'id="figure-{figure}"' in page
    assert page.count(PLOTLY_BANNER) == 1, "plotly.js is inlined once, for the first figure"
    assert not re.search(r"<script[^>]+src=", page), "no script is loaded from elsewhere"
    for kind in ("Hits", "Misses", "Flagged", "Flips"):
        assert re.search(rf"<h3>{kind} \((\d+)\)</h3>", page), kind
    cards = re.findall(r'<div class="card (kept|flagged)">', page)
    assert page.count("image unreadable") == len(cards), "each card's test item"
    assert 4 <= len(cards) <= 4 * MAX_CARDS_PER_KIND
    uris = re.findall(r'<img src="(data:[^"]+)"', page)
    assert len(uris) == 5 * len(cards), "each card's 5 train neighbours"
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uris[0].removeprefix(DATA_URI))))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= THUMBNAIL_EDGE


def test_hostile_labels_ids_and_names_stay_text(images_folder):
    ids = [f"{HOSTILE[i % len(HOSTILE)]} #{i}" for i in range(58)]
    embeddings = clustered(
        n_classes=len(HOSTILE), per_class=2, n_test=48, labels=HOSTILE, ids=ids, model=HOSTILE[1]
    )
    images = dict.fromkeys(embeddings.ids, images_folder[0])
    page = report_of(embeddings, images, name=HOSTILE[0])
    markup = Markup(page)

    for tag, attributes in markup.tags:
        assert tag != "a" and not any(
            name.startswith("on") or name == "href" for name in attributes
        ), (tag, attributes)
        if tag == "img":
            assert attributes["src"].startswith(DATA_URI)
    # plotly's config and library, then one call per figure (4): a label's </script> cannot open another.
    assert markup.scripts == page.count("<script") == page.count("</script>") == 2 + 4
    shown = " ".join(markup.texts)
    for hostile in HOSTILE[:4]:
        assert hostile in shown, hostile
    assert "\u202e" not in page and "⟨U+202E⟩" in shown, "a bidi override is shown, not obeyed"


def test_a_label_the_page_elides_is_whole_in_its_title():
    long = "L" * 300
    embeddings = clustered(n_classes=3, labels=[long, "b", "c"])
    markup = Markup(report_of(embeddings, name="x"))
    titles = [attributes["title"] for tag, attributes in markup.tags if "title" in attributes]
    assert long in titles, "the hover text holds the whole label"
    assert long not in " ".join(markup.texts) and ELLIPSIS in " ".join(markup.texts)


def metrics_rows(page: str) -> dict[str, list[str]]:
    """The metrics table as its rows' cells by the row's name, as text."""
    section = page[page.index("<h2>Metrics</h2>") : page.index("<h2>Threshold</h2>")]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1]):
        name, *cells = [
            " ".join(Markup(cell).texts).strip() for cell in re.findall(r"<td>(.*?)</td>", row)
        ]
        rows[name] = cells
    return rows


@pytest.mark.parametrize("truth", [True, False], ids=["with test truth", "without"])
def test_every_metric_in_the_report_is_explained_in_a_sentence_beside_it(truth):
    rows = metrics_rows(report_of(clustered(truth=truth), name="x"))
    metrics = {
        "threshold",
        "flagged as distractors",
        'where "-1" goes',
        "expected MAP@5",
        "estimated distractor share",
        "MAP@5",
    }
    if truth:
        metrics |= {
            'MAP@5 with "-1" first',
            'MAP@5 with "-1" optimal',
            "best MAP@5 with truth",
            "mP@5",
            "top-1 accuracy",
            "distractor detection",
        }
    assert set(rows) == metrics
    for name, (_, meaning) in rows.items():
        # A sentence, not a figure or a word: it says in words what the value measures.
        assert len(meaning.split()) >= 8 and meaning.endswith("."), (name, meaning)
    assert '"first":' in rows['where "-1" goes'][1] and '"optimal":' in rows['where "-1" goes'][1]


def test_the_report_offers_no_upload_and_links_to_no_outside_host():
    page = report_of(clustered(), name="plain")
    library_start = page.index(PLOTLY_BANNER)
    library = page[library_start : page.index("</script>", library_start)]
    own = page.replace(
        library, ""
    )  # plotly.js names hosts in code a report never runs (maps, fonts)
    # Each call is Plotly.newPlot(id, data, layout, config), the config a flat object, last.
    calls = [call.split("</script>")[0] for call in own.split("Plotly.newPlot(")[1:]]
    configs = [json.loads(re.findall(r"\{[^{}]*\}", call)[-1]) for call in calls]
    assert len(configs) == 4
    for config in configs:
        # showSendToCloud: plotly.js's "Share chart..." button, on unless turned off.
        assert config["showSendToCloud"] is False and config["displaylogo"] is False, config
        assert "plotlyServerURL" not in config
    assert not re.findall(r"(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", own)


def test_a_large_set_with_long_hostile_text_stays_within_the_bound(tmp_path):
    n_test = MAP_POINT_LIMIT + 1_000
    long = "<b>" + "x" * 1_000
    labels = [f"{long} {i}" for i in range(20)]
    ids = [f"{long} {i}" for i in range(60 + n_test)]
    embeddings = clustered(n_classes=20, per_class=3, n_test=n_test, labels=labels, ids=ids)
    # Noise as large as a thumbnail: no downscaling smooths it, the largest JPEG a thumbnail can be.
    worst = [
        noise_image(tmp_path / f"{i}.png", size=(THUMBNAIL_EDGE, THUMBNAIL_EDGE), seed=i)
        for i in range(6)
    ]
    images = {item_id: worst[i % len(worst)] for i, item_id in enumerate(embeddings.ids)}
    # Flagging fewer than the distractors keeps some of them: misses, so every kind of card is full.
    config = ReportConfig(map_method="pca", cards=MAX_CARDS_PER_KIND)
    page = report_of(embeddings, images, config, PredictConfig(contamination=0.1), name=long)

    assert page.count('<div class="card ') == 4 * MAX_CARDS_PER_KIND
    assert len(page.encode()) <= MAX_REPORT_BYTES
    assert f"random sample of {MAP_POINT_LIMIT:,} of the {60 + n_test:,} points" in page
    assert long not in page, "long text is elided"
    map_script = page[page.index('id="figure-map"') :]
    drawn = sum(
        int(count.replace(",", ""))
        for count in re.findall(
            r'"name":"[^"]*?\(([\d,]+)\)"', map_script[: map_script.index("</script>")]
        )
    )
    assert drawn == MAP_POINT_LIMIT


def test_an_embeddings_parquet_without_images_reports_from_the_command_line(
    tmp_path, workspace, capsys
):
    parquet = tmp_path / "vectors.parquet"
    write_embeddings(parquet, clustered(truth=False))
    out = tmp_path / "shared" / "report.html"
    assert (
        main(["report", str(parquet), "--map-method", "pca", "--cards", "2", "--out", str(out)])
        == 0
    )
    captured = capsys.readouterr()
    for stage in ("searching", "projecting", "drawing the figures", "writing the report"):
        assert stage in captured.err
    assert "wrote" in captured.out

    page = out.read_text(encoding="utf-8")
    cards = page.count('<div class="card ')
    assert cards >= 2 * 2 and page.count("<br>cosine ") == 5 * cards, (
        "every card names its 5 neighbours"
    )
    assert "<img" not in page and "no-image" not in page.split("</style>")[1], (
        "no image, no placeholder: the ids say it"
    )
    assert "Retrieval report: vectors" in page and "no true labels" in page and "Kept (2)" in page
    assert "Hits" not in page and "flagging 5% more of test" in page
    assert 'id="figure-map-at-k"' not in page, "no MAP curve without test truth"


def test_a_dataset_folder_reports_with_thumbnails_from_the_command_line(
    tmp_path, workspace, image_file
):
    for i in range(9):
        image_file(
            f"shapes/train/class{i % 3}/t{i}.png", colour=(80 * (i % 3), 40, 200 - 60 * (i % 3))
        )
    for i in range(8):
        image_file(f"shapes/test/c{i}.png", colour=(80 * (i % 3), 40, 200 - 60 * (i % 3)))
    out = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                str(tmp_path / "shapes"),
                "--model",
                "baseline",
                "--map-method",
                "pca",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = out.read_text(encoding="utf-8")
    assert "Retrieval report: shapes" in page and page.count(f'<img src="{DATA_URI}') >= 6


def test_the_report_command_refuses_bad_options(tmp_path, capsys):
    assert (
        main(
            [
                "report",
                str(tmp_path / "dataset"),
                "--cards",
                str(MAX_CARDS_PER_KIND + 1),
                "--out",
                str(tmp_path / "r.html"),
            ]
        )
        == 2
    )
    assert "cards must be between 0 and" in capsys.readouterr().err


@pytest.mark.parametrize(
    "given, message",
    [
        ({"cards": -1}, "cards must be between"),
        ({"map_method": "mds"}, "map_method must be one of"),
    ],
)
def test_report_config_refuses_bad_values(given, message):
    with pytest.raises(ValueError, match=message):
        ReportConfig(**given)


def test_flags_of_another_length_are_refused():
    with pytest.raises(ValueError, match="one value per test item"):
        report_of(clustered(), name="x", flags=np.zeros(3, bool))


def test_the_evaluate_page_shares_the_report_of_what_it_shows_with_its_audit(monkeypatch):
    offered = offered_downloads(monkeypatch)
    app = run_page("evaluate", evaluate_share=True, evaluate_share_map="pca")
    assert_ran(app)
    page = offered["Share (HTML report)"]()  # what a click downloads
    assert "Retrieval report: demo: coloured shapes" in page and page.count(PLOTLY_BANNER) == 1
    assert "PCA map" in page and page.count(f'<img src="{DATA_URI}') >= 6
    assert "<h2>Audit</h2>" in page


def test_the_evaluate_page_names_the_report_map_methods_as_people_write_them():
    app = run_page("evaluate")
    assert_ran(app)
    assert app.button_group(key="evaluate_share_map").options == ["UMAP", "t-SNE", "PCA"]
