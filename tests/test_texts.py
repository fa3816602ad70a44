"""Tests for core.io.texts: texts from .txt and .csv files, and prompts from labels."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from input_files import write_files

from core.io.texts import load_texts, prompts_for
from core.records import DISTRACTOR


def test_load_texts_from_txt_strips_and_skips_blank_lines(tmp_path):
    path = (
        write_files(tmp_path, {"t.txt": "\ufeff a red circle \n\n  \nblue square\n".encode()})
        / "t.txt"
    )
    assert load_texts(path) == ["a red circle", "blue square"]


@pytest.mark.parametrize(
    "content, column, expected",
    [
        (b"caption\na cat\n\na dog\n", None, ["a cat", "a dog"]),
        (b"id,prompt\n1,a cat\n2,a dog\n", None, ["a cat", "a dog"]),
        (b"id,words\n1,a cat\n", "Words", ["a cat"]),
    ],
    ids=["only column", "prompt column", "named column"],
)
def test_load_texts_from_csv(tmp_path, content, column, expected):
    path = write_files(tmp_path, {"t.csv": content}) / "t.csv"
    assert load_texts(path, column=column) == expected


def test_load_texts_bad_inputs(tmp_path):
    files = write_files(
        tmp_path, {"two.csv": b"a,b\n1,2\n", "blank.txt": b"\n \n", "t.json": b"[]"}
    )
    with pytest.raises(
        ValueError, match="has columns a, b; pass column= one of them or name it text"
    ):
        load_texts(files / "two.csv")
    with pytest.raises(ValueError, match="has no column 'c'; columns: a, b"):
        load_texts(files / "two.csv", column="c")
    with pytest.raises(ValueError, match="holds no non-empty texts"):
        load_texts(files / "blank.txt")
    with pytest.raises(ValueError, match=r"unsupported text file t.json"):
        load_texts(files / "t.json")


def test_prompts_for_requires_the_label_placeholder():
    assert prompts_for(["red circle", DISTRACTOR]) == ["a photo of a red circle", "a photo of a -1"]
    with pytest.raises(ValueError, match="template 'a photo' must contain \\{label\\}"):
        prompts_for(["cat"], template="a photo")


@given(
    labels=st.lists(st.text(max_size=15)),
    prefix=st.text(max_size=10),
    suffix=st.text(max_size=10),
)
def test_prompts_for_property(labels, prefix, suffix):
    assume((prefix + "{label}" + suffix).count("{label}") == 1)
    prompts = prompts_for(labels, template=prefix + "{label}" + suffix)
    assert prompts == [prefix + label + suffix for label in labels]
