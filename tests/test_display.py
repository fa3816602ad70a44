"""Tests for core.display: hostile user text stays text in Markdown."""

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.display import (
    DISPLAY_LIMIT,
    ELLIPSIS,
    ZERO_WIDTH_SPACE,
    elided,
    inert,
    inert_plotly,
    visible_controls,
)

HOSTILE = [
    "![x](http://127.0.0.1:8765/probe)",
    "[click me](https://example.invalid/phish)",
    "see https://example.invalid/a and www.example.invalid or me@example.invalid",
    "<img src=x onerror=alert(1)>",
    "label\n\n![i](http://127.0.0.1:8765/id)",
    "a `code` b ``c``",
    "abc\u202edcba",
    ":red[alarm] :material/home: $x^2$ :tada:",
    "x" * 10_000,
]


def unescaped(markdown: str) -> str:
    """What CommonMark displays for `markdown` whose punctuation is all backslash-escaped."""
    return re.sub(r"\\(.)", r"\1", markdown).replace(ZERO_WIDTH_SPACE, "")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_has_no_markup_left(text):
    shown = inert(text)
    assert not re.search(r"(?<!\\)[\[\]()!<>`*_:$#|~]", shown), shown
    assert "\n" not in shown and "\u202e" not in shown
    assert not re.search(r"(?i)https?:|www\.|@\w", shown.replace("\\", ""))
    assert len(unescaped(shown)) <= DISPLAY_LIMIT


@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
        max_size=DISPLAY_LIMIT,
    )
)
def test_ordinary_text_reads_back_exactly(text):
    if any(char.isspace() and char != " " for char in text):
        return
    assert unescaped(inert(text)) == text


def test_control_and_bidi_characters_are_shown_by_code():
    assert visible_controls("a\u202eb\tc\x00") == "a⟨U+202E⟩b⟨U+0009⟩c⟨U+0000⟩"


def test_long_text_keeps_its_start_and_end():
    text = "start-" + "x" * 500 + "-end"
    cut = elided(text, 40)
    assert len(cut) == 40 and cut.startswith("start-") and cut.endswith("-end") and ELLIPSIS in cut
    assert elided("short", 40) == "short"
    with pytest.raises(ValueError, match="limit must be at least 3 characters, got 2"):
        elided(text, 2)


def test_plotly_text_keeps_no_tag_and_reads_back():
    shown = inert_plotly('<a href="https://example.invalid/x">x</a><br>&lt;')
    assert "<" not in shown and ">" not in shown
    assert shown == '&lt;a href="https://example.invalid/x"&gt;x&lt;/a&gt;&lt;br&gt;&amp;lt;'
    assert inert_plotly("a\nb") == "a⟨U+000A⟩b"


@given(st.text(max_size=200))
def test_no_control_format_or_line_character_survives(text):
    shown = visible_controls(text)
    assert not [
        char
        for char in shown
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
        or (char.isspace() and char != " ")
    ]
