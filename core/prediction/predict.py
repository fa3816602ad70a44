"""Top-k label predictions from neighbours, "-1" placement for distractors, and the submission CSV format."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.io.files import read_csv, replaced_atomically
from core.io.labels import normalise_label
from core.progress import Watch
from core.records import DISTRACTOR
from core.search.index import Neighbours, VectorIndex, checked_vectors

# The first search of every query goes k × the largest class deep (enough for k distinct labels) but
# no deeper than this: past it, the queries still short of k labels search again without the classes
# they have, so search cost follows the number of queries, not the size of the largest class.
FIRST_SEARCH_DEPTH = 256
# Query × neighbour cells searched in one FAISS call: 3 MB of results and about 20 MB to rank them,
# whatever the number of queries or the depth.
# A search as deep as FIRST_SEARCH_DEPTH fills a call; one at k × 20 (classes of 20) fills 40% of it,
# so the cap bounds how much more memory uneven classes take: at 1 << 19 a train set half of which was
# one class took 2.7× the peak memory of the same rows in classes of 20 (bench section 3), at 1 << 18
# 0.8× (20k train × 64-d, 5k queries, each in a fresh process; time 1.4 s against 1.1 s, under load).
_CELLS_PER_CALL = 1 << 18
# Queries searched in one FAISS call at most: a call this size still runs at full speed, and the
# first search reports its progress and can be stopped between calls (under a second each at 30k train).
_QUERIES_PER_CALL = 2048
# The neighbour table handed back (12 bytes a cell) may take at most about 1.6 GB.
MAX_NEIGHBOUR_CELLS = 1 << 27
# What a watch hears while the search runs.
FIRST_SEARCH_STAGE = "searching test against train"
DEEPER_SEARCH_STAGE = "searching deeper for the queries short of labels"


def search_labels(
    index: VectorIndex,
    train_labels: Sequence[str],
    queries: np.ndarray,
    k: int,
    width: int,
    watch: Watch = Watch(),
) -> tuple[Neighbours, list[list[str]]]:
    """Each query's top `width` neighbours, and its k distinct train labels ranked by each class's best similarity.

    The labels are those of a search over all of train, without searching all of it: classes whose
    best similarities tie keep FAISS's order (later train row first). Rows are shorter than k only
    when train has fewer than k classes. `watch` hears of each block of the first search and can stop
    the search between FAISS calls (Cancelled).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    # A NaN or infinite similarity never settles a label, so deeper searches would follow forever.
    queries = checked_vectors(queries, "queries")
    labels = np.asarray(train_labels, dtype=object)
    if len(labels) != len(index):
        raise ValueError(
            f"{len(labels)} train labels but {len(index)} indexed vectors; give one label per vector"
        )
    classes, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    width = min(max(width, 1), len(index))
    n_queries = len(queries)
    if n_queries * width > MAX_NEIGHBOUR_CELLS:
        raise ValueError(
            f"{n_queries:,} queries × {width:,} neighbours each need {12 * n_queries * width / 2**30:.1f} GB, above the "
            f"{12 * MAX_NEIGHBOUR_CELLS / 2**30:.1f} GB this search may hand back: lower k and score_k, or search the "
            "queries in parts"
        )
    depth = first_search_depth(len(index), width, k, int(sizes.max()))
    want = min(k, len(classes))
    # each query's settled classes, best first: the first `settled[query]` codes of its row
    found = np.full((n_queries, want), -1, np.int64)
    settled = np.zeros(n_queries, np.int64)
    neighbours = Neighbours(
        np.empty((n_queries, width), np.float32), np.empty((n_queries, width), np.int64)
    )
    short = []
    first_blocks = _blocks(np.arange(n_queries), depth)
    for done, block in enumerate(first_blocks):
        watch.step(done, len(first_blocks), FIRST_SEARCH_STAGE)
        result = index.search(queries[block], depth)
        neighbours.similarities[block], neighbours.indices[block] = (
            result.similarities[:, :width],
            result.indices[:, :width],
        )
        short += _settle(block, result, codes, depth == len(index), found, settled)
    # A query short of labels searches again among the classes it lacks; one whose whole result tied
    # (nothing settled) searches twice as deep.
    depths = dict.fromkeys(short, depth)
    while depths:
        groups: dict[tuple, list[int]] = {}
        for query, query_depth in depths.items():
            have = tuple(sorted(found[query, : settled[query]].tolist()))
            groups.setdefault((have, query_depth), []).append(query)
        depths = {}
        for (excluded, group_depth), members in groups.items():
            allowed = np.ones(len(index), bool)
            allowed[np.isin(codes, excluded)] = False
            candidates = int(allowed.sum())
            group_depth = min(group_depth, candidates)
            for block in _blocks(np.array(members), group_depth):
                watch.step(len(first_blocks), len(first_blocks), DEEPER_SEARCH_STAGE)
                result = index.search(queries[block], group_depth, allowed)
                had = dict(zip(block.tolist(), settled[block].tolist()))
                for query in _settle(
                    block, result, codes, group_depth == candidates, found, settled
                ):
                    gained = settled[query] > had[query]
                    depths[query] = group_depth if gained else 2 * group_depth
    return neighbours, classes[found].tolist()


def first_search_depth(n_rows: int, width: int, k: int, largest_class: int) -> int:
    """Rows the first search keeps per query: enough for k classes of the largest size, at most FIRST_SEARCH_DEPTH
    (queries still short of labels search again), and never fewer than the `width` handed back."""
    return min(n_rows, max(width, min(k * largest_class, FIRST_SEARCH_DEPTH)))


def _blocks(queries: np.ndarray, depth: int) -> list[np.ndarray]:
    size = max(1, min(_QUERIES_PER_CALL, _CELLS_PER_CALL // depth))
    return [queries[start : start + size] for start in range(0, len(queries), size)]


def _settle(
    block: np.ndarray,
    result: Neighbours,
    codes: np.ndarray,
    complete: bool,
    found: np.ndarray,
    settled: np.ndarray,
) -> list[int]:
    """Add to `found` the classes a search result settles for each query of `block`; return the queries still short.

    A class is settled when one of its rows scores above the result's last similarity: every row
    scoring as much is then in the result, in FAISS's order (equal similarities: later row first),
    so the class's first row in the result is its best. Rows at the last similarity may be any part
    of a tie that goes on past the result; a `complete` result (every candidate row) has no such doubt.
    A query's result never holds a class it has settled already (those rows are not searched again).
    """
    sure = result.indices >= 0
    if not complete:
        sure &= result.similarities > result.similarities[:, -1:]
    position, column = np.nonzero(sure)  # by query, then best first
    code = codes[result.indices[position, column]]
    _, first = np.unique(position * (int(codes.max()) + 1) + code, return_index=True)
    first.sort()
    position, code = position[first], code[first]
    # each new class's rank among its query's, after the classes the query already had
    starts = np.searchsorted(position, np.arange(len(block)))
    slot = settled[block][position] + np.arange(len(position)) - starts[position]
    kept = slot < found.shape[1]
    found[block[position[kept]], slot[kept]] = code[kept]
    settled[block] = np.minimum(
        settled[block] + np.bincount(position, minlength=len(block)), found.shape[1]
    )
    return block[settled[block] < found.shape[1]].tolist()


def place_minus_one(
    rows: Sequence[Sequence[str]], positions: np.ndarray, k: int = 5
) -> list[list[str]]:
    """Each row with "-1" at its position (1..k; 0: nowhere), cut to k labels."""
    if len(rows) != len(positions):
        raise ValueError(f"{len(rows)} prediction rows but {len(positions)} positions")
    placed = []
    for row, position in zip(rows, positions):
        row = list(row[:k])
        if position:
            row.insert(int(position) - 1, DISTRACTOR)
        placed.append(row[:k])
    return placed


def place_distractor(
    rows: Sequence[Sequence[str]], flagged: np.ndarray, k: int = 5
) -> list[list[str]]:
    """Flagged rows get "-1" first and their top k-1 labels after it."""
    if len(rows) != len(flagged):
        raise ValueError(f"{len(rows)} prediction rows but {len(flagged)} flags")
    return place_minus_one(rows, np.where(flagged, 1, 0), k)


def true_ranks(rows: Sequence[Sequence[str]], truth: Sequence[str]) -> np.ndarray:
    """Where each item's true label stands in its ranked labels: 1.., or 0 when absent (always for a distractor)."""
    return np.array(
        [list(row).index(label) + 1 if label in row else 0 for row, label in zip(rows, truth)],
        dtype=np.int64,
    )


SUBMISSION_COLUMNS = ("id", "predictions")


def first_label_counts(rows: Sequence[Sequence[str]]) -> pd.DataFrame:
    """Each class predicted first, with the test images it heads: most often first, ties by name.

    "-1" (flagged) is left out: it often outnumbers any class a hundredfold, so callers state its
    count apart.
    """
    heads = pd.Series([row[0] for row in rows if len(row) and row[0] != DISTRACTOR], dtype=object)
    counts = heads.value_counts().rename_axis("class").reset_index(name="test images")
    return counts.sort_values(
        ["test images", "class"], ascending=[False, True], kind="stable", ignore_index=True
    )


def submission_label(label: str) -> str:
    """A label as it stands in a space-separated submission: inner white space becomes "_"."""
    return "_".join(str(label).split())


def submission_cell(row: Sequence[str]) -> str:
    """A row of labels as the submission's predictions cell spells it: space-separated, each as submission_label."""
    return " ".join(map(submission_label, row))


def submission_csv(ids: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The submission as text: `id,predictions` with the labels space-separated, one row per test image."""
    if len(ids) != len(rows):
        raise ValueError(f"{len(ids)} ids but {len(rows)} prediction rows")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(SUBMISSION_COLUMNS)
    writer.writerows((image_id, submission_cell(row)) for image_id, row in zip(ids, rows))
    return buffer.getvalue()


def write_submission(path: Path | str, ids: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """Write `submission_csv(ids, rows)` to `path`, creating its folder; a failed write keeps the old file."""
    text = submission_csv(ids, rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as partial:
        partial.write_text(text, encoding="utf-8", newline="")
    return path


def _rows_by_id(path: Path | str, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV keyed by its `id` column, which must not repeat."""
    path = Path(path)
    rows, _ = read_csv(path, required)
    first: dict[str, int] = {}
    for row_number, row in enumerate(rows, start=2):
        if first.setdefault(row["id"], row_number) != row_number:
            raise ValueError(
                f"{path.name} repeats the id {row['id']!r} (rows {first[row['id']]} and {row_number})"
            )
    return rows


def read_submission(path: Path | str) -> dict[str, list[str]]:
    """id → predicted labels, from a submission CSV."""
    return {row["id"]: row["predictions"].split() for row in _rows_by_id(path, SUBMISSION_COLUMNS)}


def read_truth(path: Path | str) -> dict[str, str]:
    """id → true label ("-1" for a distractor) as a submission spells it, from a CSV with columns id,label.

    Labels are read by the rules every dataset reader follows (normalise_label), so "-1.0" from a
    float column is the distractor label here as it is in `evaluate`.
    """
    truth = {}
    for row in _rows_by_id(path, ("id", "label")):
        try:
            label = normalise_label(row["label"])
        except ValueError:
            raise ValueError(f"{Path(path).name} has an empty label for id {row['id']!r}") from None
        truth[row["id"]] = submission_label(label)
    return truth
