"""Texts for text-image matching: a .txt or a .csv column of texts, and prompts made from labels."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from core.io.files import read_csv, text_file_errors

TEXT_COLUMN_NAMES = ("text", "prompt", "caption")


def load_texts(path: Path, column: str | None = None) -> list[str]:
    """Non-empty stripped texts from a .txt (one per line) or a .csv column.

    The CSV's first row is its header. The column is `column`, else the only one, else the
    first called text, prompt or caption.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with text_file_errors(path):
            texts = path.read_text(encoding="utf-8-sig").splitlines()
    elif suffix == ".csv":
        rows, columns = read_csv(path)
        chosen = _text_column(path, columns, column)
        texts = [row.get(chosen) or "" for row in rows]
    else:
        raise ValueError(f"unsupported text file {path.name}: expected .txt (one per line) or .csv")
    texts = [text.strip() for text in texts if text.strip()]
    if not texts:
        raise ValueError(f"{path} holds no non-empty texts")
    return texts


def _text_column(path: Path, columns: list[str], column: str | None) -> str:
    if column is not None:
        if column.strip().lower() in columns:
            return column.strip().lower()
        raise ValueError(f"{path.name} has no column {column!r}; columns: {', '.join(columns)}")
    if len(columns) == 1:
        return columns[0]
    for name in TEXT_COLUMN_NAMES:
        if name in columns:
            return name
    raise ValueError(
        f"{path.name} has columns {', '.join(columns)}; pass column= one of them "
        f"or name it {', '.join(TEXT_COLUMN_NAMES)}"
    )


def prompts_for(labels: Iterable[str], template: str = "a photo of a {label}") -> list[str]:
    """One text prompt per label, `{label}` in `template` replaced by the label."""
    if "{label}" not in template:
        raise ValueError(
            f"template {template!r} must contain {{label}}, e.g. 'a photo of a {{label}}'"
        )
    return [template.replace("{label}", str(label)) for label in labels]
