"""Tests for core.io.parquet: the embeddings Parquet round trip and every unusable row or file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from input_files import make_embeddings, write_files, write_raw_parquet

from core.io.parquet import (
    MODEL_METADATA_KEY,
    PRECISION_METADATA_KEY,
    read_embeddings,
    read_embeddings_checked,
    write_embeddings,
)
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings


def test_parquet_round_trip_keeps_everything(tmp_path):
    original = make_embeddings()
    write_embeddings(tmp_path / "e.parquet", original)
    loaded = read_embeddings(tmp_path / "e.parquet")
    assert loaded.ids.tolist() == original.ids.tolist()
    assert loaded.splits.tolist() == original.splits.tolist()
    assert loaded.labels.tolist() == ["cat", "dog", DISTRACTOR, None]
    assert loaded.model == "test/model" and loaded.vectors.dtype == np.float32
    np.testing.assert_allclose(loaded.vectors, original.vectors, atol=1e-6)
    schema = pq.read_schema(tmp_path / "e.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert (
        schema.metadata[MODEL_METADATA_KEY] == b"test/model"
        and PRECISION_METADATA_KEY not in schema.metadata
    )


def test_the_precision_is_recorded_when_known(tmp_path):
    write_embeddings(tmp_path / "e.parquet", make_embeddings(), precision="bf16")
    assert pq.read_schema(tmp_path / "e.parquet").metadata[PRECISION_METADATA_KEY] == b"bf16"


def test_parquet_without_model_metadata_reads_unknown_and_renormalises(tmp_path):
    path = write_raw_parquet(
        tmp_path / "raw.parquet",
        {
            "id": ["a", "b"],
            "split": [TRAIN, TEST],
            "label": ["cat", None],
            "embedding": [[3.0, 4.0], [0.0, 2.0]],
        },
    )
    loaded = read_embeddings(path)
    assert loaded.model == "unknown"
    np.testing.assert_allclose(loaded.vectors, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)


def test_parquet_missing_columns_are_named(tmp_path):
    path = write_raw_parquet(tmp_path / "m.parquet", {"id": ["a"], "vector": [[1.0]]})
    with pytest.raises(
        ValueError, match="missing column\\(s\\) split, label, embedding: found id, vector"
    ):
        read_embeddings(path)


def test_parquet_bad_split_values_are_named(tmp_path):
    path = write_raw_parquet(
        tmp_path / "s.parquet",
        {
            "id": ["a", "b"],
            "split": [TRAIN, "val"],
            "label": ["x", "y"],
            "embedding": [[1.0], [1.0]],
        },
    )
    with pytest.raises(
        ValueError, match="split column has value\\(s\\) 'val'; allowed: train, test"
    ):
        read_embeddings(path)


def test_parquet_ragged_dimensions_are_an_error(tmp_path):
    path = write_raw_parquet(
        tmp_path / "r.parquet",
        {
            "id": ["a", "b"],
            "split": [TRAIN, TEST],
            "label": ["x", None],
            "embedding": [[1.0, 0.0], [1.0, 0.0, 0.0]],
        },
    )
    with pytest.raises(ValueError, match="embeddings have different lengths \\(2, 3\\)"):
        read_embeddings(path)


def test_parquet_unusable_rows_are_dropped_and_reported(tmp_path):
    path = write_raw_parquet(
        tmp_path / "n.parquet",
        {
            "id": ["good", "nan", "inf", "zero", "none", "good"],
            "split": [TRAIN] * 6,
            "label": ["x"] * 6,
            "embedding": [
                [1.0, 1.0],
                [float("nan"), 1.0],
                [float("inf"), 0.0],
                [0.0, 0.0],
                None,
                [2.0, 0.0],
            ],
        },
    )
    emb, dropped = read_embeddings_checked(path)
    assert emb.ids.tolist() == ["good"]
    assert [(r.name, r.reason) for r in dropped] == [
        ("nan", "embedding has NaN or infinite values"),
        ("inf", "embedding has NaN or infinite values"),
        ("zero", "embedding is all zeros (norm 0)"),
        ("none", "missing embedding"),
        ("good", "id repeated (first at row 0)"),
    ]
    with pytest.warns(UserWarning, match="dropped row\\(s\\) with unusable embeddings: 5 rejected"):
        assert read_embeddings(path).ids.tolist() == ["good"]


def test_not_parquet_is_a_clear_error(tmp_path):
    path = write_files(tmp_path, {"x.parquet": b"nope"}) / "x.parquet"
    with pytest.raises(ValueError, match="is not a readable Parquet file"):
        read_embeddings(path)


# Labels already spelled as normalise_label spells them: they come back unchanged.
labels_strategy = st.one_of(
    st.none(),
    st.text(max_size=12)
    .map(lambda text: " ".join(text.split()))
    .filter(lambda text: text and not text.replace(".", "").lstrip("+-").isdigit()),
)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(st.tuples(st.just(TEST), labels_strategy), min_size=1, max_size=12),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
    model=st.text(max_size=20),
)
def test_parquet_round_trip_property(tmp_path_factory, rows, dim, seed, model):
    vectors = np.random.default_rng(seed).normal(size=(len(rows), dim)).astype(np.float32) + 1e-3
    original = Embeddings(
        ids=np.array([f"id{i}" for i in range(len(rows))]),
        splits=np.array([split for split, _ in rows]),
        labels=np.array([label for _, label in rows], dtype=object),
        vectors=vectors,
        model=model,
    )
    path = tmp_path_factory.mktemp("prop") / "e.parquet"
    write_embeddings(path, original)
    loaded, dropped = read_embeddings_checked(path)
    assert dropped == []
    assert loaded.labels.tolist() == original.labels.tolist()
    assert loaded.splits.tolist() == original.splits.tolist()
    assert loaded.model == model
    np.testing.assert_allclose(np.linalg.norm(loaded.vectors, axis=1), 1.0, atol=1e-5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.vectors, unit, atol=1e-5)


def test_a_parquet_without_rows_is_a_clear_error(tmp_path):
    empty = pa.table(
        {
            "id": pa.array([], pa.string()),
            "split": pa.array([], pa.string()),
            "label": pa.array([], pa.string()),
            "embedding": pa.array([], pa.list_(pa.float32())),
        }
    )
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=r"empty.parquet has no rows"):
        read_embeddings(tmp_path / "empty.parquet")


def test_rows_without_any_vector_are_dropped_not_a_reshape_error(tmp_path):
    path = write_raw_parquet(
        tmp_path / "v.parquet",
        {
            "id": ["a"],
            "split": [TRAIN],
            "label": ["x"],
            "embedding": pa.array([None], pa.list_(pa.float32())),
        },
    )
    emb, dropped = read_embeddings_checked(path)
    assert len(emb.ids) == 0 and [(r.name, r.reason) for r in dropped] == [
        ("a", "missing embedding")
    ]


def test_blank_padded_and_float_labels_are_read_as_one_spelling(tmp_path):
    path = write_raw_parquet(
        tmp_path / "l.parquet",
        {
            "id": ["a", "b", "c", "d", "e", "f", "g"],
            "split": [TRAIN, TRAIN, TRAIN, TRAIN, TEST, TEST, TEST],
            "label": ["", "   ", " -1", "cat ", "-1.0", "3.0", None],
            "embedding": [[1.0, float(i)] for i in range(7)],
        },
    )
    with pytest.warns(UserWarning, match="white space tidied in 2 label"):
        emb, dropped = read_embeddings_checked(path)
    assert dict(zip(emb.ids, emb.labels)) == {"d": "cat", "e": DISTRACTOR, "f": "3", "g": None}
    assert [(r.name, r.reason) for r in dropped] == [
        ("a", "empty label"),
        ("b", "empty label"),
        ("c", "label -1 marks test distractors and cannot be a train class"),
    ]
