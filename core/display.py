"""What reaches the screen as text: user text (ids, labels, file names, queries, dataset and workspace names) made
inert for Markdown display, and counts written one way."""

from __future__ import annotations

import html
import re
import unicodedata

DISPLAY_LIMIT = 160  # characters of one user string shown; longer ones are elided in the middle
ELLIPSIS = "…"
# Every ASCII punctuation character can be backslash-escaped in CommonMark; escaping all of them
# also disarms Streamlit's own syntax (:red[…], :material/…:, $LaTeX$, emoji shortcodes).
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub-flavoured Markdown turns bare URLs and e-mail addresses into links after escapes are
# resolved, so escaping cannot stop it; a zero-width space inside the trigger does.
AUTOLINK_TRIGGERS = re.compile(r"(?i)(?<=https)(?=\\:)|(?<=http)(?=\\:)|(?<=www)(?=\\\.)|(?<=@)")
ZERO_WIDTH_SPACE = "\u200b"


def visible_controls(text: str) -> str:
    """Control, format and bidi-override characters shown as ⟨U+XXXX⟩, so none can break a line,
    reverse the text after it or hide inside a name; white space other than a plain space too."""
    # no control, format or separator character but the space: most text, fast
    if text.isprintable():
        return text
    return "".join(
        f"⟨U+{ord(char):04X}⟩"
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
        or (char.isspace() and char != " ")
        else char
        for char in text
    )


def elided(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """`text` cut to `limit` characters, keeping its start and end around an ellipsis."""
    if limit < 3:
        raise ValueError(f"limit must be at least 3 characters, got {limit}")
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2 + (limit - 1) % 2
    return text[:head] + ELLIPSIS + text[len(text) - (limit - 1 - head) :]


def inert(text: object, limit: int = DISPLAY_LIMIT) -> str:
    """One user string as Markdown that shows exactly its characters: no link, image, markup or
    line break can come from it, control characters are visible and very long text is elided."""
    shown = elided(visible_controls(str(text)), limit)
    escaped = MARKDOWN_PUNCTUATION.sub(r"\\\1", shown)
    return AUTOLINK_TRIGGERS.sub(ZERO_WIDTH_SPACE, escaped)


def inert_html(text: object, limit: int = DISPLAY_LIMIT) -> str:
    """One user string as HTML text that shows exactly its characters: no tag or entity can come from it,
    control characters are visible and very long text is elided."""
    return html.escape(elided(visible_controls(str(text)), limit))


def inert_plotly(text: object, limit: int = DISPLAY_LIMIT) -> str:
    """One user string for Plotly's hover texts and tick labels, whose pseudo-HTML would otherwise
    turn `<a href>` into a link and `<br>` into a line break."""
    shown = elided(visible_controls(str(text)), limit)
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def count_text(count: float) -> str:
    """A count as every page and chart writes it: thousands separated ("13,000")."""
    return f"{round(count):,}"
