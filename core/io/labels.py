"""Class labels as every reader hands them on: one spelling per class, whichever file it came from."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

from core.records import DISTRACTOR, TRAIN

# How pandas writes an integer label once its column holds a gap: "3.0", "-1.0".
_INTEGER_AS_FLOAT = re.compile(r"[+-]?\d+\.0*")
EMPTY_LABEL = "empty label"
DISTRACTOR_IN_TRAIN = f"label {DISTRACTOR} marks test distractors and cannot be a train class"


def normalise_label(raw: object) -> str | None:
    """The label as every stage compares it and a submission spells it; None when it is missing.

    Integer-valued floats, as numbers or as text, become the integer ("3.0" and 3.0 become "3",
    -1.0 the distractor label "-1"); white space around a label goes and runs inside it become one
    space, because a submission cannot tell them apart. None and NaN are missing labels. Raises
    ValueError(EMPTY_LABEL) when no text is left.
    """
    if raw is None:
        return None
    if isinstance(raw, numbers.Integral):
        return str(int(raw))
    if isinstance(raw, numbers.Real):
        value = float(raw)
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(raw)
    text = " ".join(str(raw).split())
    if not text:
        raise ValueError(EMPTY_LABEL)
    if _INTEGER_AS_FLOAT.fullmatch(text):
        return str(int(text.split(".")[0]))
    return text


def label_values(column, name: str, source: str) -> list[object]:
    """The raw labels of an Arrow column (a Parquet file's, a Hugging Face split's), one per row.

    Raises ValueError naming `source`, the column and its type when a row holds a list, a struct or
    a map: several values cannot be one label, and their text ("[2, 1]") would pass for a class.
    """
    import pyarrow as pa

    kind = column.type
    values = kind.value_type if pa.types.is_dictionary(kind) else kind
    if pa.types.is_nested(values):
        raise ValueError(
            f"{source}: the label column {name!r} holds {kind} values; a label is one text or "
            "number per row, not a list, a struct or a map"
        )
    return column.to_pylist()


def checked_label(raw: object, split: str) -> tuple[str | None, str]:
    """normalise_label's label for an item of `split`, and why the item is refused ("" when it is not)."""
    try:
        label = normalise_label(raw)
    except ValueError as exc:
        return None, str(exc)
    if split == TRAIN and label == DISTRACTOR:
        return None, DISTRACTOR_IN_TRAIN
    return label, ""


def white_space_note(source: str, raw_labels: Iterable[object]) -> str | None:
    """One line saying which labels of `source` lost white space to normalise_label, or None."""
    tidied = sorted(
        {
            raw
            for raw in raw_labels
            if isinstance(raw, str) and raw.strip() and " ".join(raw.split()) != raw
        }
    )
    if not tidied:
        return None
    examples = ", ".join(f"{raw!r} -> {' '.join(raw.split())!r}" for raw in tidied[:3])
    return f"{source}: white space tidied in {len(tidied)} label(s), e.g. {examples}"
