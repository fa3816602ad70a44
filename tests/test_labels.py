"""Tests for core.io.labels: one spelling per label from every reader, so evaluate and score agree."""

from __future__ import annotations

import csv

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from input_files import RED, encode
from PIL import Image

from core.analysis.pipeline import analyse
from core.io.labels import (
    DISTRACTOR_IN_TRAIN,
    EMPTY_LABEL,
    checked_label,
    normalise_label,
    white_space_note,
)
from core.io.layouts import load_dataset
from core.io.parquet import read_embeddings_checked
from core.prediction.config import PredictConfig
from core.prediction.metrics import map_at_k
from core.prediction.predict import read_submission, read_truth, write_submission
from core.records import DISTRACTOR, TEST, TRAIN


@pytest.mark.parametrize(
    "raw, expected",
    [
        (3.0, "3"),
        (-1.0, DISTRACTOR),
        ("3.0", "3"),
        ("-1.0", DISTRACTOR),
        (np.float32(2.0), "2"),
        (7, "7"),
        (np.int64(-1), DISTRACTOR),
        (" -1", DISTRACTOR),
        ("-1 ", DISTRACTOR),
        ("  red   circle ", "red circle"),
        ("1.5", "1.5"),
        (2.5, "2.5"),
        ("3.01", "3.01"),
        (None, None),
        (float("nan"), None),
        ("cat", "cat"),
    ],
)
def test_normalise_label_gives_one_spelling(raw, expected):
    assert normalise_label(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_blank_labels_are_refused(raw):
    with pytest.raises(ValueError, match=EMPTY_LABEL):
        normalise_label(raw)
    assert checked_label(raw, TEST) == (None, EMPTY_LABEL)


def test_distractor_label_is_refused_in_train_only():
    assert checked_label(" -1.0 ", TRAIN) == (None, DISTRACTOR_IN_TRAIN)
    assert checked_label(" -1.0 ", TEST) == (DISTRACTOR, "")


def test_white_space_note_names_the_tidied_labels():
    assert white_space_note("d", ["cat", None, 3.0, "   "]) is None
    assert (
        white_space_note("d", [" cat", "a  b", "dog"])
        == "d: white space tidied in 2 label(s), e.g. ' cat' -> 'cat', 'a  b' -> 'a b'"
    )


# --------------------------------------------------------------------------- evaluate and score agree

# Each class spelled as users' files spell it: pandas floats, padding, doubled inner spaces.
SPELLINGS = {
    "0": ["0", "0.0", " 0", 0.0],
    "1": ["1", "1.0", "1 ", 1.0],
    "12": ["12", "12.0", "\t12", 12.0],
    "red circle": ["red circle", " red circle", "red  circle"],
    "blue": ["blue", "blue ", " blue"],
    DISTRACTOR: ["-1", "-1.0", " -1", "-1 ", -1.0],
}
TRAIN_CLASSES = [label for label in SPELLINGS if label != DISTRACTOR]


def spelled(draw, label: str, as_float: bool) -> object:
    choices = [s for s in SPELLINGS[label] if isinstance(s, float) == as_float] or SPELLINGS[label][
        :1
    ]
    return draw(st.sampled_from(choices))


@st.composite
def labelled_table(draw):
    """Raw train and test labels of one file (a float column or a text column) and matching vectors."""
    as_float = draw(st.booleans())
    classes = [c for c in TRAIN_CLASSES if not as_float or c[0].isdigit()]
    train = draw(st.lists(st.sampled_from(classes), min_size=len(classes), max_size=12))
    train = classes + train[len(classes) :]  # every class at least once
    test = draw(st.lists(st.sampled_from([*classes, DISTRACTOR]), min_size=1, max_size=8))
    raw_train = [spelled(draw, label, as_float) for label in train]
    raw_test = [spelled(draw, label, as_float) for label in test]
    seed = draw(st.integers(0, 2**16))
    contamination = draw(st.sampled_from([0.0, 0.3, 0.6]))
    return raw_train, raw_test, seed, contamination


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=labelled_table())
def test_evaluate_and_score_agree_on_every_accepted_label_spelling(tmp_path_factory, case):
    raw_train, raw_test, seed, contamination = case
    folder = tmp_path_factory.mktemp("agree")
    n = len(raw_train) + len(raw_test)
    ids = [f"img{i}.jpg" for i in range(n)]
    vectors = np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)
    pq.write_table(pa.table({
        "id": ids, "split": [TRAIN] * len(raw_train) + [TEST] * len(raw_test),
        "label": raw_train + raw_test, "embedding": vectors.tolist(),
    }), folder / "e.parquet")  # fmt: skip
    embeddings, dropped = read_embeddings_checked(folder / "e.parquet")
    assert dropped == []

    analysis = analyse(embeddings, PredictConfig(contamination=contamination))
    evaluated = analysis.report().measured_map

    test_ids = embeddings.ids[embeddings.mask(TEST)].tolist()
    write_submission(folder / "submission.csv", test_ids, analysis.predictions())
    # the user's own spelling
    with open(folder / "truth.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "label"), *zip(ids[len(raw_train) :], raw_test)])
    truth, submission = read_truth(folder / "truth.csv"), read_submission(folder / "submission.csv")
    scored = map_at_k([truth[i] for i in test_ids], [submission[i] for i in test_ids])
    assert scored == pytest.approx(evaluated, abs=1e-12)


def test_a_float_label_column_scores_as_its_integer_labels(tmp_path):
    """pandas writes integer labels with a gap as float64: "-1.0" must still be the distractor label."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    train = [c for c in range(4) for _ in range(3)]
    test = [0, 1, 2, 3, -1, -1]
    vectors = np.array(
        [centres[c] + 0.05 * rng.normal(size=16) for c in train + [4 if c < 0 else c for c in test]]
    )
    ids = [f"i{i}" for i in range(len(vectors))]
    splits = [TRAIN] * len(train) + [TEST] * len(test)
    reports = {}
    for kind, labels in {
        "int": pa.array(train + test, pa.int64()),
        "float": pa.array(train + test, pa.float64()),
    }.items():
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(
            pa.table({"id": ids, "split": splits, "label": labels, "embedding": vectors.tolist()}),
            path,
        )
        embeddings, _ = read_embeddings_checked(path)
        reports[kind] = analyse(embeddings, PredictConfig(contamination=2 / 6)).report()
    assert reports["float"] == reports["int"]
    assert reports["float"].measured.detection.recall > 0.5


NESTED_LABELS = {
    "list": (pa.list_(pa.int64()), [[2, 1], [3], [1], []]),
    "struct": (
        pa.struct([("coarse", pa.string()), ("fine", pa.int64())]),
        [{"coarse": "cat", "fine": 1}] * 4,
    ),
    "map": (pa.map_(pa.string(), pa.int64()), [[("cat", 1)]] * 4),
}


@pytest.mark.parametrize("kind", NESTED_LABELS)
def test_a_parquet_label_column_of_lists_or_structs_is_refused_naming_it_and_its_type(
    tmp_path, kind
):
    """Their text ("[2, 1]") would pass for a class and be scored as one."""
    label_type, labels = NESTED_LABELS[kind]
    path = tmp_path / "nested.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"{i}.jpg" for i in range(4)],
                "split": [TRAIN, TRAIN, TEST, TEST],
                "label": pa.array(labels, label_type),
                "embedding": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]],
            }
        ),
        path,
    )
    with pytest.raises(
        ValueError,
        match=rf"nested\.parquet: the label column 'label' holds {kind}<.*> values; a label is one "
        "text or number per row",
    ):
        read_embeddings_checked(path)


@pytest.mark.parametrize("kind", ["list", "struct"])
def test_a_huggingface_label_column_of_lists_or_structs_is_refused_naming_it_and_its_type(
    tmp_path, workspace, kind
):
    label_feature = {
        "list": datasets.Sequence(datasets.ClassLabel(names=["cat", "dog"])),
        "struct": {"coarse": datasets.Value("string"), "fine": datasets.Value("int64")},
    }[kind]
    labels = {"list": [[0, 1], [1]], "struct": [{"coarse": "cat", "fine": 1}] * 2}[kind]
    image = {"bytes": encode(Image.new("RGB", (8, 8), RED)), "path": None}
    datasets.Dataset.from_dict(
        {"image": [image, image], "tags": labels},
        features=datasets.Features({"image": datasets.Image(), "tags": label_feature}),
    ).save_to_disk(tmp_path / "multi")
    source = f"{tmp_path / 'multi'}?label_column=tags"
    with pytest.raises(
        ValueError, match=rf"multi split train: the label column 'tags' holds {kind}<.*> values"
    ):
        load_dataset(source)
