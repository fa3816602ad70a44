"""The embeddings Parquet format: writing it atomically, reading it back (a file or a folder of part files) with unusable rows dropped."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.io.files import refusal_examples, replaced_atomically
from core.io.labels import checked_label, label_values, white_space_note
from core.records import SPLITS, Embeddings, Rejected

MODEL_METADATA_KEY = b"retrieval_lab.model"
# The precision the vectors were computed in (fp32, bf16); absent for models without one, like the baseline.
PRECISION_METADATA_KEY = b"retrieval_lab.precision"
EMBEDDING_COLUMNS = ("id", "split", "label", "embedding")
# Parquet reads kept in memory: a dataset is read when it is added and again for its analysis,
# so the last few reads are kept rather than read twice (each is as large as its vectors).
READS_KEPT = 2
# Names pyarrow.dataset skips in a folder of part files (Spark's _SUCCESS, .crc files).
IGNORED_PREFIXES = ("_", ".")


def is_embeddings_source(path: Path) -> bool:
    """A `.parquet` file, or a folder whose visible files are all Parquet part files."""
    path = Path(path)
    if not path.is_dir():
        return path.suffix.lower() == ".parquet"
    parts = [child for child in path.iterdir() if not child.name.startswith(IGNORED_PREFIXES)]
    return bool(parts) and all(
        child.is_file() and child.suffix.lower() == ".parquet" for child in parts
    )


def write_embeddings(path: Path, emb: Embeddings, precision: str | None = None) -> None:
    """Write `emb` as Parquet (id, split, label, embedding) with the model, and the precision when known, in the schema metadata.

    The file is written beside `path` and moved into place, so a failure never leaves a half
    file where a good one was.
    """
    table = embeddings_table(emb, precision)
    with replaced_atomically(Path(path)) as partial:
        pq.write_table(table, partial)


def embeddings_table(emb: Embeddings, precision: str | None = None) -> pa.Table:
    """`emb` as an Arrow table in the project's schema, the model and precision (None: unknown or none) in its metadata."""
    vectors = np.ascontiguousarray(emb.vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embedding vectors must be 2-D (rows, dim), got shape {vectors.shape}")
    n, dim = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim, pa.int32())
    metadata = {MODEL_METADATA_KEY: emb.model.encode()}
    if precision is not None:
        metadata[PRECISION_METADATA_KEY] = precision.encode()
    return pa.table(
        {
            "id": pa.array([str(i) for i in emb.ids], pa.string()),
            "split": pa.array([str(s) for s in emb.splits], pa.string()),
            "label": pa.array([_label_or_none(label) for label in emb.labels], pa.string()),
            "embedding": pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel(), pa.float32())),
        }
    ).replace_schema_metadata(metadata)


def read_embeddings(path: Path) -> Embeddings:
    """Read an embeddings Parquet file; rows dropped as unusable are reported in a warning."""
    emb, dropped = read_embeddings_checked(path)
    if dropped:
        message = f"{path}: dropped row(s) with unusable embeddings{refusal_examples(dropped)}"
        warnings.warn(message, stacklevel=2)
    return emb


def read_embeddings_checked(path: Path) -> tuple[Embeddings, list[Rejected]]:
    """Read and validate an embeddings Parquet file or folder of part files; returns the usable rows and the dropped ones.

    A version of the file already read is not read again: callers share the returned vectors,
    which nobody changes in place. Raises ValueError for a file that is not Parquet, missing columns, split values other than
    train/test, a non-numeric embedding column or rows of different lengths. Rows with a missing
    id, label or vector, NaN/inf values, a zero vector or a repeated id are dropped. Labels come
    back as normalise_label spells them. Vectors come back as float32 with unit L2 norm.
    """
    path = Path(path)
    emb, dropped = _read_version(path, _version(path))
    return emb, list(dropped)


def _version(path: Path) -> tuple:
    """What changes when the file or one of its parts is rewritten (an atomic replace makes a new inode)."""
    try:
        # A folder's hidden files come and go while a run writes it (half-written parts, its lock): only its parts count.
        files = (
            sorted(child for child in path.iterdir() if not child.name.startswith(IGNORED_PREFIXES))
            if path.is_dir()
            else [path]
        )
        return tuple(
            (file.name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            for file in files
            for stat in [file.stat()]
        )
    except OSError as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None


@functools.lru_cache(maxsize=READS_KEPT)
def _read_version(path: Path, version: tuple) -> tuple[Embeddings, tuple[Rejected, ...]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    missing = [column for column in EMBEDDING_COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} is missing column(s) {', '.join(missing)}: found "
            f"{', '.join(table.column_names)}; required: {', '.join(EMBEDDING_COLUMNS)}"
        )
    if table.num_rows == 0:
        raise ValueError(f"{path} has no rows: it holds the columns but no embeddings")
    ids = table.column("id").cast(pa.string()).to_pylist()
    splits = table.column("split").cast(pa.string()).to_pylist()
    bad_splits = ", ".join(sorted({repr(s) for s in splits if s not in SPLITS}))
    if bad_splits:
        raise ValueError(
            f"{path}: split column has value(s) {bad_splits}; allowed: {', '.join(SPLITS)}"
        )
    raw_labels = label_values(table.column("label"), "label", str(path))
    labels, label_problems = zip(*map(checked_label, raw_labels, splits))
    note = white_space_note(str(path), raw_labels)
    if note:
        warnings.warn(note, stacklevel=2)
    vectors, present = _embedding_matrix(path, table.column("embedding"))
    metadata = table.schema.metadata or {}
    model = metadata.get(MODEL_METADATA_KEY, b"unknown").decode("utf-8", "replace")

    # Squared norms in float64 without a float64 copy of the matrix: exact for every float32 row, so
    # NaN/inf rows come out non-finite and only an all-zero row comes out 0.
    squared_norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    keep, dropped = _usable_rows(ids, label_problems, squared_norms, present)
    every_row = len(keep) == len(ids)
    kept_vectors = vectors if every_row else vectors[keep]
    norms = np.sqrt(squared_norms if every_row else squared_norms[keep]).astype(np.float32)
    emb = Embeddings(
        ids=np.array(ids if every_row else [ids[i] for i in keep], dtype=str),
        splits=np.array(splits if every_row else [splits[i] for i in keep], dtype=str),
        labels=np.array(labels if every_row else [labels[i] for i in keep], dtype=object),
        vectors=np.divide(kept_vectors, norms[:, None], dtype=np.float32),
        model=model,
    )
    return emb, tuple(dropped)


def _embedding_matrix(path: Path, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The (n, d) float32 matrix of the embedding column and which rows had a vector at all."""
    kind = column.type
    list_kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    number_kinds = (pa.types.is_floating, pa.types.is_integer)
    if not any(is_kind(kind) for is_kind in list_kinds) or not any(
        is_kind(kind.value_type) for is_kind in number_kinds
    ):
        raise ValueError(f"{path}: embedding column has type {kind}; expected a list of floats")
    column = column.combine_chunks()
    present = column.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)[present]
    dims = sorted({int(d) for d in lengths})
    if len(dims) > 1:
        raise ValueError(
            f"{path}: embeddings have different lengths ({', '.join(map(str, dims))}); "
            "all rows must match"
        )
    dim = dims[0] if dims else 0
    if present.any() and dim == 0:
        raise ValueError(f"{path}: embeddings are empty lists")
    # flatten() skips the values of missing rows; float32 values with no nulls come out without a copy.
    values = column.flatten().cast(pa.float32()).to_numpy(zero_copy_only=False)
    if present.all():
        return values.reshape(-1, dim), present
    matrix = np.full((len(present), dim), np.nan, dtype=np.float32)
    if present.any():  # numpy cannot infer the rows of an empty (-1, 0) reshape
        matrix[present] = values.reshape(-1, dim)
    return matrix, present


def _label_or_none(label: object) -> str | None:
    return None if label is None else str(label)


def _usable_rows(
    ids: list[str | None],
    label_problems: Sequence[str],
    squared_norms: np.ndarray,
    present: np.ndarray,
) -> tuple[list[int], list[Rejected]]:
    keep: list[int] = []
    dropped: list[Rejected] = []
    first_row: dict[str, int] = {}
    finite = np.isfinite(squared_norms)
    nonzero = squared_norms > 0
    for row, row_id in enumerate(ids):
        name = row_id if row_id is not None else f"row {row}"
        if row_id is None:
            reason = "missing id"
        elif label_problems[row]:
            reason = label_problems[row]
        elif not present[row]:
            reason = "missing embedding"
        elif not finite[row]:
            reason = "embedding has NaN or infinite values"
        elif not nonzero[row]:
            reason = "embedding is all zeros (norm 0)"
        elif row_id in first_row:
            reason = f"id repeated (first at row {first_row[row_id]})"
        else:
            first_row[row_id] = row
            keep.append(row)
            continue
        dropped.append(Rejected(name, reason))
    return keep, dropped
