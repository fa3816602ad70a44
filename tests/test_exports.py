import base64
import csv
import io
import json
import math
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_pages import assert_ran, run_page

from core.__main__ import main
from core.analysis.pipeline import analyse
from core.audit.findings import EXPORT_COLUMNS
from core.display import ZERO_WIDTH_SPACE
from core.exports import EXPORT_FORMATS, export, exported_zip
from core.exports.atlas import THUMBNAIL_EDGE
from core.exports.items import export_items, label_similarities
from core.exports.tensorboard import (
    METADATA_COLUMNS,
    SPRITE_MAX_SIDE,
    SPRITE_MIN_IMAGE_EDGE,
    sprite_cell,
    tsv_field,
)
from core.io.demo import write_demo_dataset
from core.io.labels import normalise_label
from core.io.parquet import read_embeddings, write_embeddings
from core.maps.projection import ProjectionConfig, project
from core.prediction.config import PredictConfig
from core.prediction.predict import read_submission, submission_cell, write_submission
from core.records import DISTRACTOR, Embeddings

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")

# Text that breaks a naive writer of each format: TSV separators and line ends, quotes and
# backslashes (JSON, protobuf text), markup, characters outside ASCII, and what Embedding Atlas
# would show as a link or an image (a URL, base64 of a PNG).
HOSTILE_LABELS = [
    "tab\there",
    "line\nbreak\r\nend",
    'quote " and \\ back',
    "<img src=x onerror=alert(1)>",
    "名前 \u2028 sep",
    "https://example.com/x",
    "iVBORw0KGgo" + "A" * 60,
]
PCA = ProjectionConfig(method="pca")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """An analysis of 5 hostile-labelled classes (3 train images each) and 12 test items, with images for all but one."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(HOSTILE_LABELS) + 1, 12))
    labels = [label for label in HOSTILE_LABELS for _ in range(3)]
    truth = [HOSTILE_LABELS[i % len(HOSTILE_LABELS)] for i in range(9)] + [DISTRACTOR] * 3
    codes = [HOSTILE_LABELS.index(label) for label in labels] + [
        len(HOSTILE_LABELS) if label == DISTRACTOR else HOSTILE_LABELS.index(label)
        for label in truth
    ]
    vectors = centres[codes] + 0.3 * rng.normal(size=(len(codes), 12))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"train {i}\t.png" for i in range(len(labels))] + [
        f'test "{i}"\n.png' for i in range(len(truth))
    ]
    embeddings = Embeddings(
        np.array(ids),
        np.array(["train"] * len(labels) + ["test"] * len(truth)),
        np.array(labels + truth, object),
        vectors,
        'model "x"\n',
    )
    analysis = analyse(embeddings, PredictConfig(contamination=0.25))
    folder = tmp_path_factory.mktemp("images")
    images = {}
    for index, item_id in enumerate(ids[:-1]):
        images[item_id] = folder / f"{index}.png"
        Image.new("RGB", (40, 24), (20 * index % 256, 80, 160)).save(images[item_id])
    return analysis, images


@pytest.fixture(scope="module")
def items(hostile):
    analysis, images = hostile
    return export_items(analysis, images)


def written(tmp_path, export_format, items, **options):
    return export(export_format, items, tmp_path / export_format, 'set "one"\n', **options)


# ── shared rows ──────────────────────────────────────────────────────────────


def test_label_similarities_are_each_labels_best_cosine_to_its_train_images(hostile):
    analysis, _ = hostile
    rows = analysis.predictions()
    found = label_similarities(analysis, rows)
    train = analysis.train
    for query, (row, similarities) in enumerate(zip(rows, found)):
        for label, similarity in zip(row, similarities):
            if label == DISTRACTOR:
                assert similarity is None
            else:
                best = (train.vectors[train.labels == label] @ analysis.test.vectors[query]).max()
                assert similarity == pytest.approx(float(best), abs=1e-5)


def test_items_hold_train_then_test_with_predictions_only_for_test(hostile, items):
    analysis, _ = hostile
    n_train = len(analysis.train.ids)
    assert list(items.ids) == [*analysis.train.ids, *analysis.test.ids]
    assert (
        items.predictions[:n_train] == [None] * n_train
        and items.predictions[n_train:] == analysis.predictions()
    )
    assert items.flagged[n_train:] == analysis.flags().tolist() and items.image_paths[-1] is None


def test_an_unknown_format_is_refused_by_name(items, tmp_path):
    with pytest.raises(
        ValueError, match="'csv' is not known; use one of fiftyone, atlas, tensorboard"
    ):
        export("csv", items, tmp_path, "x")


def test_a_file_where_the_folder_should_be_is_refused(items, tmp_path):
    (tmp_path / "out").write_text("keep me")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        export("tensorboard", items, tmp_path / "out", "x")
    assert (tmp_path / "out").read_text() == "keep me"


# ── round trips: what an export writes reads back to the same ids and labels ──────────────────

# Ids as file names can be: white space of every kind, URLs, data: URLs, unicode, a backslash before
# a letter (an escape's look-alike), 10,000 characters.
ROUND_TRIP_IDS = [
    "two  spaces .png",
    "tab\there.png",
    "line\nbreak\r\nend.png",
    "http://example.com/a.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "名前 ü ☃.png",
    "x" * 10_000,
    'quote " , and \\ back.png',
    " padded ",
    "sep\u2028\x85.png",
    "\\t not a tab.png",
]
# Labels as every reader hands them on (normalise_label: runs of white space are one space).
ROUND_TRIP_LABELS = [
    normalise_label(raw)
    for raw in [
        "two words",
        "tab\tand\nnewline",
        "http://example.com/class",
        "data:image/png;base64,iVBORw0KGgo" + "A" * 100,
        "名前 ü ☃",
        "L" * 1_000 + " end",
        'quote " and \\ back',
        "iVBORw0KGgo" + "A" * 60,
    ]
]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """An analysis of hostile ids and labels (3 train images a class, 20 test items, a fifth of them distractors), and an image per item."""
    rng = np.random.default_rng(1)
    n_classes = len(ROUND_TRIP_LABELS)
    centres = rng.normal(size=(n_classes + 1, 12))
    codes = [c for c in range(n_classes) for _ in range(3)] + [
        n_classes if i % 5 == 0 else i % n_classes for i in range(20)
    ]
    n_train = 3 * n_classes
    vectors = centres[codes] + 0.3 * rng.normal(size=(len(codes), 12))
    ids = [f"{ROUND_TRIP_IDS[i % len(ROUND_TRIP_IDS)]}{i}" for i in range(len(codes))]
    labels = [DISTRACTOR if code == n_classes else ROUND_TRIP_LABELS[code] for code in codes]
    embeddings = Embeddings(
        np.array(ids),
        np.array(["train"] * n_train + ["test"] * (len(codes) - n_train)),
        np.array(labels, object),
        (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32),
        "model",
    )
    folder = tmp_path_factory.mktemp("round-trip-images")
    images = {}
    for index, item_id in enumerate(ids):
        images[item_id] = folder / f"{index}.png"
        Image.new("RGB", (16, 16), (10 * index % 256, 90, 30)).save(images[item_id])
    return embeddings, analyse(embeddings, PredictConfig(contamination=0.2)), images


@pytest.fixture(scope="module")
def round_trip_items(round_trip):
    _, analysis, images = round_trip
    return export_items(analysis, images)


def test_an_embeddings_parquet_reads_back_hostile_ids_and_labels_exactly(round_trip, tmp_path):
    embeddings, _, _ = round_trip
    write_embeddings(tmp_path / "vectors.parquet", embeddings)
    read = read_embeddings(tmp_path / "vectors.parquet")
    assert read.ids.tolist() == embeddings.ids.tolist()
    assert read.labels.tolist() == embeddings.labels.tolist()


def test_atlas_reads_back_hostile_ids_labels_and_predictions_exactly(
    round_trip, round_trip_items, tmp_path
):
    _, analysis, _ = round_trip
    items = round_trip_items
    projection = project(analysis.train.vectors, analysis.test.vectors, PCA)
    exported = written(tmp_path, "atlas", items, projection=projection)
    read = read_embeddings(exported.files[0])  # as python -m core evaluate atlas.parquet reads it
    assert read.ids.tolist() == items.ids.tolist() and read.labels.tolist() == list(items.labels)
    table = pq.read_table(exported.files[0])
    assert table["predictions"].to_pylist() == items.predictions
    assert table["prediction"].to_pylist() == [row and row[0] for row in items.predictions]


def tsv_value(field: str) -> str:
    r"""A metadata.tsv field read back by the rule README.md gives: \\, \t, \n, \r and \uXXXX are escapes."""
    return re.sub(
        r"\\(\\|t|n|r|u[0-9a-f]{4})",
        lambda found: (
            {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}.get(found[1])
            or chr(int(found[1][1:], 16))
        ),
        field,
    )


def test_tensorboard_metadata_reads_back_hostile_ids_and_labels_exactly(round_trip_items, tmp_path):
    items = round_trip_items
    exported = written(tmp_path, "tensorboard", items)
    rows = _projector_rows(exported.folder / "metadata.tsv")[1:]
    assert len(rows) == len(items) and {len(row) for row in rows} == {len(METADATA_COLUMNS)}
    columns = dict(zip(METADATA_COLUMNS, zip(*rows)))
    assert [tsv_value(field) for field in columns["id"]] == items.ids.tolist()
    assert [tsv_value(field) for field in columns["label"]] == list(items.labels)
    predictions = items.predictions[items.n_train :]
    assert [tsv_value(field) for field in columns["prediction"][items.n_train :]] == [
        row[0] for row in predictions
    ]
    # The k labels as the submission's cell spells them: a label's own spaces cannot split it.
    assert [tsv_value(field) for field in columns["predictions"][items.n_train :]] == [
        submission_cell(row) for row in predictions
    ]


def test_fiftyone_samples_read_back_hostile_ids_and_labels_exactly(round_trip_items, tmp_path):
    items = round_trip_items
    exported = written(tmp_path, "fiftyone", items)
    samples = json.loads((exported.folder / "samples.json").read_text(encoding="utf-8"))["samples"]
    assert [sample["item_id"] for sample in samples] == items.ids.tolist()
    assert [sample["ground_truth"]["label"] for sample in samples] == list(items.labels)
    assert [
        [label["label"] for label in sample["predictions"]["classifications"]]
        for sample in samples[items.n_train :]
    ] == items.predictions[items.n_train :]


def test_a_submission_reads_back_hostile_ids_and_scores_as_evaluate_does(
    round_trip, tmp_path, capsys
):
    _, analysis, _ = round_trip
    ids, predictions = analysis.test.ids.tolist(), analysis.predictions()
    submission = write_submission(tmp_path / "submission.csv", ids, predictions)
    read = read_submission(submission)
    assert list(read) == ids
    # The submission's own spelling: a label's inner spaces are "_", as the truth file is read too.
    assert [" ".join(row) for row in read.values()] == [submission_cell(row) for row in predictions]
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "label"), *zip(ids, analysis.truth)])
    assert main(["score", str(submission), str(truth)]) == 0
    assert capsys.readouterr().out.strip() == f"MAP@5 = {analysis.report().measured_map:.6f}"


# ── TensorBoard projector ────────────────────────────────────────────────────


def _projector_rows(metadata: Path) -> list[list[str]]:
    """metadata.tsv read as the projector's browser code reads it: lines split on "\\n", blank ones skipped, a header when tabbed."""
    lines = [line for line in metadata.read_bytes().decode("utf-8").split("\n") if line.strip()]
    assert "\t" in lines[0]
    return [line.split("\t") for line in lines]


def test_tensorboard_metadata_keeps_every_item_on_one_row_of_its_columns(items, tmp_path):
    exported = written(tmp_path, "tensorboard", items)
    metadata = exported.folder / "metadata.tsv"
    rows = _projector_rows(metadata)
    assert rows[0] == list(METADATA_COLUMNS)
    assert len(rows) == len(items) + 1 and all(len(row) == len(METADATA_COLUMNS) for row in rows)
    # TensorBoard's server counts rows with Python's own line splitting, which breaks at more characters.
    assert len(metadata.read_text(encoding="utf-8").splitlines()) == len(items) + 1
    assert [row[2] for row in rows[1:]] == [tsv_field(label) for label in items.labels]
    assert [row[5] for row in rows[1 : 1 + items.n_train]] == [
        ""
    ] * items.n_train  # train rows have no verdict


def test_tensorboard_vectors_read_back_as_the_projectors_reader_parses_them(items, tmp_path):
    exported = written(tmp_path, "tensorboard", items)
    # tensorboard/plugins/projector/projector_plugin.py _read_tensor_tsv_file
    with open(exported.folder / "tensors.tsv") as handle:
        tensor = np.array(
            [
                list(map(float, line.rstrip("\n").split("\t")))
                for line in handle
                if line.rstrip("\n")
            ],
            "float32",
        )
    np.testing.assert_allclose(tensor, items.vectors, atol=1e-5)


def _projector_config_class():
    """ProjectorConfig built from the fields of tensorboard/plugins/projector/projector_config.proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(
        name="export_test_projector_config.proto", package="export_test.projector", syntax="proto3"
    )
    kinds = descriptor_pb2.FieldDescriptorProto
    schema = {
        "SpriteMetadata": [
            ("image_path", kinds.TYPE_STRING, False),
            ("single_image_dim", kinds.TYPE_UINT32, True),
        ],
        "EmbeddingInfo": [
            ("tensor_name", kinds.TYPE_STRING, False),
            ("metadata_path", kinds.TYPE_STRING, False),
            ("bookmarks_path", kinds.TYPE_STRING, False),
            ("tensor_shape", kinds.TYPE_UINT32, True),
            ("sprite", ".export_test.projector.SpriteMetadata", False),
            ("tensor_path", kinds.TYPE_STRING, False),
        ],
        "ProjectorConfig": [
            ("model_checkpoint_path", kinds.TYPE_STRING, False),
            ("embeddings", ".export_test.projector.EmbeddingInfo", True),
            ("model_checkpoint_dir", kinds.TYPE_STRING, False),
        ],
    }
    for message_name, fields in schema.items():
        message = proto.message_type.add(name=message_name)
        for number, (field_name, kind, repeated, *_) in enumerate(fields, 1):
            field = message.field.add(name=field_name, number=number)
            field.label = kinds.LABEL_REPEATED if repeated else kinds.LABEL_OPTIONAL
            if isinstance(kind, str):
                field.type, field.type_name = kinds.TYPE_MESSAGE, kind
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("export_test.projector.ProjectorConfig")
    )


def test_projector_config_parses_with_the_published_schema_and_names_the_files(items, tmp_path):
    from google.protobuf import text_format

    exported = written(tmp_path, "tensorboard", items)
    config = text_format.Parse(
        (exported.folder / "projector_config.pbtxt").read_text(), _projector_config_class()()
    )
    (embedding,) = config.embeddings
    assert embedding.tensor_name == f'set "one"\n · {items.model}'
    assert list(embedding.tensor_shape) == list(items.vectors.shape)
    for name in (embedding.tensor_path, embedding.metadata_path, embedding.sprite.image_path):
        assert (exported.folder / name).is_file()
    cell = sprite_cell(len(items))
    assert list(embedding.sprite.single_image_dim) == [cell, cell]
    assert "tensorboard --logdir" in exported.how_to_open


def test_the_sprite_has_each_thumbnail_in_its_cell_and_white_for_an_item_without_an_image(
    items, tmp_path
):
    exported = written(tmp_path, "tensorboard", items)
    sprite = np.asarray(Image.open(exported.folder / "sprite.png").convert("RGB"))
    cell, per_side = sprite_cell(len(items)), math.ceil(math.sqrt(len(items)))
    assert sprite.shape[1] == per_side * cell

    def centre(index):
        return sprite[(index // per_side) * cell + cell // 2, (index % per_side) * cell + cell // 2]

    assert tuple(centre(0)) == (0, 80, 160)
    assert tuple(centre(len(items) - 1)) == (255, 255, 255)


@pytest.mark.parametrize("n_items", [1, 172, 13_000, 130_000, 1_000_000])
def test_the_sprite_stays_within_its_bound(n_items):
    cell = sprite_cell(n_items)
    assert math.ceil(math.sqrt(n_items)) * cell <= SPRITE_MAX_SIDE or cell < SPRITE_MIN_IMAGE_EDGE


def test_a_tsv_field_has_no_tab_or_line_break_whatever_the_text():
    for text in [*HOSTILE_LABELS, "\x0b\x0c\x1c\x1d\x1e\x85"]:
        field = tsv_field(text)
        assert "\t" not in field and len(f"a{field}b".splitlines()) == 1
    assert tsv_field(None) == "" and tsv_field(True) == "true" and tsv_field(0.123456) == "0.1235"


def projector(logdir: Path):
    """TensorBoard's projector plugin serving `logdir`, as a test client, and the name of its one embedding."""
    pytest.importorskip("tensorboard.plugins.projector.projector_plugin")

    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    provider = data_provider.MultiplexerDataProvider(
        plugin_event_multiplexer.EventMultiplexer(), str(logdir)
    )
    plugin = projector_plugin.ProjectorPlugin(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider)
    )
    client = werkzeug_test.Client(application.TensorBoardWSGI([plugin]), wrappers.Response)
    (info,) = client.get("/data/plugin/projector/info?run=.").get_json()["embeddings"]
    return client, info


def test_tensorboard_own_plugin_serves_the_export(items, tmp_path):
    client, info = projector(written(tmp_path, "tensorboard", items).folder)
    assert info["tensorShape"] == list(items.vectors.shape)
    name = quote(info["tensorName"])
    tensor = client.get(f"/data/plugin/projector/tensor?run=.&name={name}").data
    np.testing.assert_allclose(
        np.frombuffer(tensor, np.float32).reshape(items.vectors.shape), items.vectors, atol=1e-5
    )
    metadata = client.get(f"/data/plugin/projector/metadata?run=.&name={name}").get_data(
        as_text=True
    )
    assert len(metadata.splitlines()) == len(items) + 1
    sprite = client.get(f"/data/plugin/projector/sprite_image?run=.&name={name}")
    assert sprite.status_code == 200 and sprite.mimetype == "image/png"


def test_tensorboard_own_plugin_serves_hostile_ids_one_row_each(round_trip_items, tmp_path):
    items = round_trip_items
    client, info = projector(written(tmp_path, "tensorboard", items).folder)
    name = quote(info["tensorName"])
    metadata = client.get(f"/data/plugin/projector/metadata?run=.&name={name}").get_data(
        as_text=True
    )
    rows = [line.split("\t") for line in metadata.splitlines()[1:]]
    assert [tsv_value(row[0]) for row in rows] == items.ids.tolist()
    assert [tsv_value(row[2]) for row in rows] == list(items.labels)


# ── Embedding Atlas ──────────────────────────────────────────────────────────


def test_atlas_parquet_has_the_columns_atlas_reads(hostile, items, tmp_path):
    analysis, _ = hostile
    projection = project(analysis.train.vectors, analysis.test.vectors, PCA)
    exported = written(tmp_path, "atlas", items, projection=projection)
    table = pq.read_table(exported.files[0])
    schema = table.schema
    neighbours, image = schema.field("neighbors").type, schema.field("image").type
    assert (
        neighbours.field("ids").type.value_type == pa.int64()
        and neighbours.field("distances").type.value_type == pa.float32()
    )
    assert image.field("bytes").type == pa.binary() and image.field("path").type == pa.string()
    assert {"x", "y", "text", "prediction", "predictions", "flagged", "distractor_score"} <= set(
        schema.names
    )
    rows = table.to_pylist()
    np.testing.assert_allclose(
        [[row["x"], row["y"]] for row in rows],
        np.vstack([projection.train_xy, projection.test_xy]),
        atol=1e-6,
    )
    width = {len(row["neighbors"]["ids"]) for row in rows}
    assert len(width) == 1  # Atlas stacks the neighbour lists into one array
    (width,) = width
    for index, row in enumerate(rows[: items.n_train]):
        assert index not in row["neighbors"]["ids"] and max(row["neighbors"]["ids"]) < items.n_train
    test_rows = rows[items.n_train :]
    assert [row["neighbors"]["ids"] for row in test_rows] == analysis.neighbours.indices[
        :, :width
    ].tolist()
    np.testing.assert_allclose(
        [row["neighbors"]["distances"] for row in test_rows],
        1 - analysis.neighbours.similarities[:, :width],
        atol=1e-6,
    )
    thumbnail = Image.open(io.BytesIO(rows[0]["image"]["bytes"]))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= THUMBNAIL_EDGE
    assert rows[-1]["image"] is None and rows[0]["flagged"] is None
    assert rows[0]["text"] == f"{items.ids[0]} · {HOSTILE_LABELS[0]}"
    assert "--x x --y y --text text --neighbors neighbors --image image" in exported.how_to_open
    # The same file is an embeddings Parquet the project reads back.
    np.testing.assert_array_equal(read_embeddings(exported.files[0]).vectors, items.vectors)


def test_atlas_shows_a_caption_that_looks_like_a_link_or_an_image_as_text(
    round_trip, round_trip_items, tmp_path
):
    _, analysis, _ = round_trip
    items = round_trip_items
    exported = written(
        tmp_path,
        "atlas",
        items,
        projection=project(analysis.train.vectors, analysis.test.vectors, PCA),
    )
    captions = pq.read_table(exported.files[0])["text"].to_pylist()
    # Embedding Atlas's viewer, renderers/renderer_utils.ts valueKind and utils/src/media.ts detectBase64MimeType.
    assert not [
        value
        for value in captions
        if value.startswith(("http://", "https://", "data:"))
        or re.fullmatch(r"[A-Za-z0-9+/]{64,}={0,2}", value)
    ]
    guarded = [row for row, caption in enumerate(captions) if caption.startswith(ZERO_WIDTH_SPACE)]
    assert guarded and all(
        captions[row] == ZERO_WIDTH_SPACE + items.caption(row) for row in guarded
    )


def test_embedding_atlas_own_reader_loads_the_export(hostile, items, tmp_path):
    atlas_cli = pytest.importorskip("embedding_atlas.cli")
    from embedding_atlas.graph_metrics import compute_pagerank_column
    from embedding_atlas.server import make_duckdb_connection

    analysis, _ = hostile
    exported = written(
        tmp_path,
        "atlas",
        items,
        projection=project(analysis.train.vectors, analysis.test.vectors, PCA),
    )
    frame = atlas_cli.load_datasets([str(exported.files[0])])
    assert len(compute_pagerank_column(frame, neighbors="neighbors")) == len(items)
    database = make_duckdb_connection(frame)
    rows = database.sql(
        "SELECT text, len(neighbors.ids), octet_length(image.bytes) FROM dataset"
    ).fetchall()
    assert len(rows) == len(items) and rows[0][1] >= 1 and rows[0][2] > 0
    assert {text for text, *_ in rows} >= {items.caption(row) for row in range(len(items))}


def test_embedding_atlas_own_reader_reads_back_hostile_ids_and_labels(
    round_trip, round_trip_items, tmp_path
):
    atlas_cli = pytest.importorskip("embedding_atlas.cli")
    _, analysis, _ = round_trip
    items = round_trip_items
    projection = project(analysis.train.vectors, analysis.test.vectors, PCA)
    frame = atlas_cli.load_datasets(
        [str(written(tmp_path, "atlas", items, projection=projection).files[0])]
    )
    assert frame["id"].tolist() == items.ids.tolist() and frame["label"].tolist() == list(
        items.labels
    )
    assert [None if row is None else list(row) for row in frame["predictions"]] == items.predictions


# ── FiftyOne ─────────────────────────────────────────────────────────────────


def test_fiftyone_samples_are_legacy_fiftyone_json_with_labels_and_embeddings(items, tmp_path):
    exported = written(tmp_path, "fiftyone", items)
    metadata = json.loads((exported.folder / "metadata.json").read_text())
    assert "version" not in metadata and metadata["media_type"] == "image"
    samples = json.loads((exported.folder / "samples.json").read_text())["samples"]
    assert len(samples) == len(items) - 1 and exported.notes == [
        "1 items without an image file are left out"
    ]
    for row, sample in enumerate(samples):
        assert Path(sample["filepath"]).is_absolute() and Path(sample["filepath"]).is_file()
        assert sample["item_id"] == items.ids[row] and sample["tags"] == [items.splits[row]]
        assert sample["ground_truth"] == {"_cls": "Classification", "label": items.labels[row]}
        encoded = base64.b64decode(sample["embedding"]["$binary"]["base64"])
        np.testing.assert_array_equal(
            np.load(io.BytesIO(zlib.decompress(encoded)), allow_pickle=False), items.vectors[row]
        )
    test_sample = samples[items.n_train]
    predictions = test_sample["predictions"]["classifications"]
    assert [p["label"] for p in predictions] == items.predictions[items.n_train]
    assert all(("confidence" in p) == (p["label"] != DISTRACTOR) for p in predictions)
    assert (
        test_sample["distractor"] == items.flagged[items.n_train]
        and "predictions" not in samples[0]
    )


def test_fiftyone_refuses_a_source_without_images(hostile, tmp_path):
    analysis, _ = hostile
    with pytest.raises(
        ValueError, match="a FiftyOne dataset is made of image files and this source has none"
    ):
        export("fiftyone", export_items(analysis), tmp_path, "x")


def test_fiftyone_own_importer_reads_the_export(items, tmp_path):
    importers = pytest.importorskip("fiftyone.utils.data.importers")
    exported = written(tmp_path, "fiftyone", items)
    # What fo.Dataset.from_dir does before it writes to its database: pick the importer and read every sample.
    importer = importers._handle_legacy_formats(
        importers.FiftyOneDatasetImporter(str(exported.folder))
    )
    assert isinstance(importer, importers.LegacyFiftyOneDatasetImporter)
    with importer:
        samples = list(importer)
        assert importer.get_dataset_info()["model"] == items.model
    assert [sample.ground_truth.label for sample in samples] == list(items.labels[:-1])
    test_sample = samples[items.n_train]
    assert [c.label for c in test_sample.predictions.classifications] == items.predictions[
        items.n_train
    ]
    assert (
        test_sample.embedding.shape == (items.vectors.shape[1],)
        and test_sample.distractor == items.flagged[items.n_train]
    )


# ── command line and download ────────────────────────────────────────────────


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_dataset(
        tmp_path_factory.mktemp("demo"),
        n_classes=4,
        test_per_class=2,
        n_distractor_classes=1,
        distractor_per_class=2,
        size=32,
    )


@pytest.mark.parametrize("export_format", EXPORT_FORMATS)
def test_export_command_writes_each_format_and_says_how_to_open_it(
    export_format, demo, tmp_path, workspace, capsys
):
    out = tmp_path / "out"
    assert (
        main(
            [
                "export",
                str(demo),
                "--model",
                "baseline",
                "--format",
                export_format,
                "--map-method",
                "pca",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    opener = {
        "fiftyone": "LegacyFiftyOneDataset",
        "atlas": "embedding-atlas",
        "tensorboard": "tensorboard --logdir",
    }
    assert opener[export_format] in printed and any(out.iterdir())


def test_export_command_refuses_an_out_inside_the_dataset_or_a_file(
    demo, tmp_path, workspace, capsys
):
    assert (
        main(
            [
                "export",
                str(demo),
                "--model",
                "baseline",
                "--format",
                "tensorboard",
                "--out",
                str(demo / "exports"),
            ]
        )
        == 2
    )
    assert (
        "inside the dataset folder" in capsys.readouterr().err and not (demo / "exports").exists()
    )
    (tmp_path / "file").write_text("keep me")
    assert (
        main(
            [
                "export",
                str(demo),
                "--model",
                "baseline",
                "--format",
                "tensorboard",
                "--out",
                str(tmp_path / "file"),
            ]
        )
        == 2
    )
    assert (
        f"error: --out {tmp_path / 'file'} is a file" in capsys.readouterr().err
        and (tmp_path / "file").read_text() == "keep me"
    )


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_export_refuses_an_out_folder_where_it_would_overwrite_its_input(
    demo, tmp_path, workspace, capsys
):
    vectors = tmp_path / "vectors" / "atlas.parquet"
    assert main(["embed", str(demo), "--model", "baseline", "--out", str(vectors)]) == 0
    before = vectors.read_bytes()
    capsys.readouterr()
    argv = ["export", str(vectors), "--format", "atlas", "--map-method", "pca"]
    assert main([*argv, "--out", str(vectors.parent)]) == 2
    assert one_error_line(capsys) == (
        f"error: --out {vectors.parent}'s atlas.parquet is the input {vectors}; write to another folder"
    )
    assert vectors.read_bytes() == before and list(vectors.parent.iterdir()) == [vectors]


def test_export_refuses_an_out_folder_inside_the_folder_of_its_train_csv(
    demo, tmp_path, workspace, capsys
):
    # The train.csv layout: the CSV names the train images beside it, and test/ holds the test images.
    dataset = Path(shutil.copytree(demo, tmp_path / "dataset"))
    rows = [
        f"{path.relative_to(dataset).as_posix()},{path.parent.name}"
        for path in sorted((dataset / "train").rglob("*.jpg"))
    ]
    (dataset / "train.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    test_files = sorted((dataset / "test").rglob("*"))
    argv = ["export", str(dataset / "train.csv"), "--model", "baseline", "--format", "tensorboard"]
    assert main([*argv, "--out", str(dataset / "test")]) == 2
    assert one_error_line(capsys) == (
        f"error: --out {dataset / 'test'} is inside the dataset folder {dataset}, which the command reads, "
        "so what it writes would join the dataset; write outside it"
    )
    assert sorted((dataset / "test").rglob("*")) == test_files


def test_export_command_refuses_fiftyone_for_vectors_without_images_before_analysing_them(
    demo, tmp_path, workspace, capsys, monkeypatch
):
    vectors = tmp_path / "vectors.parquet"
    assert main(["embed", str(demo), "--model", "baseline", "--out", str(vectors)]) == 0
    monkeypatch.setattr("core.analysis.pipeline.analyse", lambda *a, **k: pytest.fail("analysed"))
    assert (
        main(["export", str(vectors), "--format", "fiftyone", "--out", str(tmp_path / "out")]) == 2
    )
    assert (
        "error: a FiftyOne dataset is made of image files and this source has none"
        in capsys.readouterr().err
    )


def test_export_command_refuses_an_unknown_format(demo, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(demo), "--format", "csv", "--out", "x"])
    assert stop.value.code == 2 and "invalid choice: 'csv'" in capsys.readouterr().err


def test_the_download_zip_holds_the_export(items):
    archive = zipfile.ZipFile(io.BytesIO(exported_zip("tensorboard", items, "x")))
    assert sorted(archive.namelist()) == [
        "metadata.tsv",
        "projector_config.pbtxt",
        "sprite.png",
        "tensors.tsv",
    ]


def unzipped(archive: bytes, folder: Path) -> Path:
    zipfile.ZipFile(io.BytesIO(archive)).extractall(folder)
    return folder


@pytest.mark.parametrize("export_format", EXPORT_FORMATS)
def test_no_export_zip_names_the_folder_of_its_images(export_format, round_trip, round_trip_items):
    _, analysis, images = round_trip
    options = (
        {"projection": project(analysis.train.vectors, analysis.test.vectors, PCA)}
        if export_format == "atlas"
        else {}
    )
    archive = zipfile.ZipFile(
        io.BytesIO(exported_zip(export_format, round_trip_items, "x", **options))
    )
    here = str(next(iter(images.values())).parent).encode()
    assert not [name for name in archive.namelist() if here in archive.read(name)]


def test_the_fiftyone_zip_holds_its_images_named_inside_it(round_trip_items, tmp_path):
    items = round_trip_items
    folder = unzipped(exported_zip("fiftyone", items, "x"), tmp_path / "elsewhere")
    samples = json.loads((folder / "samples.json").read_text(encoding="utf-8"))["samples"]
    assert len(samples) == len(items)
    for row, sample in enumerate(samples):
        # FiftyOne's importer joins a relative filepath to the dataset folder.
        assert not Path(sample["filepath"]).is_absolute()
        image = folder / sample["filepath"]
        assert image.resolve().is_relative_to(folder.resolve())
        assert image.read_bytes() == items.image_paths[row].read_bytes()


def test_fiftyone_own_importer_reads_the_zip_on_another_machine(round_trip_items, tmp_path):
    importers = pytest.importorskip("fiftyone.utils.data.importers")
    items = round_trip_items
    folder = unzipped(exported_zip("fiftyone", items, "x"), tmp_path / "elsewhere")
    importer = importers._handle_legacy_formats(importers.FiftyOneDatasetImporter(str(folder)))
    with importer:
        samples = list(importer)
    assert [sample.item_id for sample in samples] == items.ids.tolist()
    assert all(Path(sample.filepath).is_file() for sample in samples)
    assert all(Path(sample.filepath).is_relative_to(folder) for sample in samples)


def offered_downloads(monkeypatch) -> dict:
    """What each download button of the pages run next offers, by its label: the data or the callable a click runs."""
    from streamlit.delta_generator import DeltaGenerator

    offered = {}
    download_button = DeltaGenerator.download_button

    def recorded(self, label, data, *args, **kwargs):
        offered[label] = data
        return download_button(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recorded)
    return offered


def test_the_evaluate_page_fiftyone_zip_names_no_server_path(monkeypatch, workspace):
    offered = offered_downloads(monkeypatch)
    app = run_page("evaluate", evaluate_export=True, evaluate_export_format="fiftyone")
    assert_ran(app)
    archive = zipfile.ZipFile(io.BytesIO(offered["FiftyOne (zip)"]()))  # what a click downloads
    texts = [archive.read(name) for name in archive.namelist() if not name.startswith("data/")]
    assert texts and not [text for text in texts if str(workspace).encode() in text]
    samples = json.loads(archive.read("samples.json"))["samples"]
    assert samples and all(sample["filepath"] in archive.namelist() for sample in samples)


def test_the_evaluate_page_offers_the_export_of_what_it_shows_with_its_audit(monkeypatch):
    offered = offered_downloads(monkeypatch)
    app = run_page("evaluate", evaluate_export=True, evaluate_export_format="tensorboard")
    assert_ran(app)
    # what a click downloads
    archive = zipfile.ZipFile(io.BytesIO(offered["TensorBoard projector (zip)"]()))
    header, *lines = archive.read("metadata.tsv").decode().splitlines()
    rows = [line.split("\t") for line in lines]
    assert set(EXPORT_COLUMNS) <= set(header.split("\t")), "the export carries the audit's findings"
    flagged = next(
        metric for metric in app.metric if metric.label == "Flagged as distractors"
    ).value
    assert "sprite.png" in archive.namelist() and sum(row[5] == "true" for row in rows) == int(
        flagged
    )
