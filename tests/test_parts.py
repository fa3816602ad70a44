"""Tests for core.io.parts and the streaming, resumable embed: part files, the rejections sidecar, kill and resume."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from input_files import make_embeddings

from core.io.files import read_csv
from core.io.parquet import MODEL_METADATA_KEY, PRECISION_METADATA_KEY, is_embeddings_source, read_embeddings_checked
from core.io.parts import REJECTED_FILE, PartWriter, embedded_ids, written_by
from core.records import Embeddings, Rejected


def rows(emb: Embeddings, chosen: slice) -> Embeddings:
    return Embeddings(emb.ids[chosen], emb.splits[chosen], emb.labels[chosen], emb.vectors[chosen], emb.model)


def test_parts_read_back_as_one_table_with_model_and_precision_and_the_sidecar_is_skipped(tmp_path):
    folder, original = tmp_path / "out" / "parts", make_embeddings()
    writer = PartWriter(folder, original.model, "bf16")
    first, second = writer.write(rows(original, slice(0, 2))), writer.write(rows(original, slice(2, 4)))
    assert writer.write(rows(original, slice(0, 0))) is None
    writer.rejected([Rejected("bad.jpg", "not an image, e.g. \"quoted\", with a comma")])

    assert first != second and sorted(path.name for path in folder.glob("part-*.parquet")) == sorted([first.name, second.name])
    assert first.name.startswith("part-000000-") and second.name.startswith("part-000001-")
    assert is_embeddings_source(folder)
    loaded, dropped = read_embeddings_checked(folder)
    assert dropped == [] and sorted(loaded.ids) == sorted(original.ids) and loaded.model == original.model
    by_id = dict(zip(loaded.ids, loaded.vectors))
    np.testing.assert_allclose([by_id[i] for i in original.ids], original.vectors, atol=1e-6)
    metadata = pq.read_schema(first).metadata
    assert (metadata[MODEL_METADATA_KEY], metadata[PRECISION_METADATA_KEY]) == (b"test/model", b"bf16")
    assert written_by(folder) == ("test/model", "bf16")
    assert embedded_ids(folder) == set(original.ids)


def test_a_second_writer_adds_parts_after_the_first_ones(tmp_path):
    original = make_embeddings()
    PartWriter(tmp_path, original.model).write(rows(original, slice(0, 3)))
    added = PartWriter(tmp_path, original.model).write(rows(original, slice(3, 4)))
    assert added.name.startswith("part-000001-")
    assert embedded_ids(tmp_path) == set(original.ids) and written_by(tmp_path) == ("test/model", None)


@pytest.mark.parametrize("model, precision", [("other/model", None), ("test/model", "fp32")])
def test_a_folder_refuses_parts_by_another_model_or_precision_naming_both(tmp_path, model, precision):
    original = make_embeddings()
    PartWriter(tmp_path, original.model).write(original)
    with pytest.raises(ValueError, match=rf"model 'test/model' in precision none, not by '{model}' in precision {precision or 'none'}"):
        PartWriter(tmp_path, model, precision)
    with pytest.raises(ValueError, match="cannot go into parts by 'test/model'"):
        PartWriter(tmp_path, original.model).write(make_embeddings(model="other/model"))


def test_a_folder_with_other_files_or_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt, which are not Parquet part files"):
        PartWriter(tmp_path, "test/model")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        embedded_ids(tmp_path / "notes.txt")


def test_embedded_ids_of_a_missing_or_empty_folder_are_none(tmp_path):
    assert embedded_ids(tmp_path / "missing") == set() == embedded_ids(tmp_path)
    assert written_by(tmp_path) is None


def test_rejections_are_appended_under_one_header_without_repeats(tmp_path):
    writer = PartWriter(tmp_path, "test/model")
    writer.rejected([Rejected("a.jpg", "truncated"), Rejected("a.jpg", "truncated")])
    PartWriter(tmp_path, "test/model").rejected([Rejected("a.jpg", "truncated"), Rejected("b.png", "empty file")])
    found, header = read_csv(tmp_path / REJECTED_FILE, required=("name", "reason"))
    assert header == ["name", "reason"]
    assert [(row["name"], row["reason"]) for row in found] == [("a.jpg", "truncated"), ("b.png", "empty file")]
