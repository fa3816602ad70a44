"""The batched, cached embedding run over a dataset (in memory, or streamed into Parquet parts), cached text embedding, and choosing the embedder for a config."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from core.embedding.baseline import BaselineEmbedder
from core.embedding.cache import EmbeddingCache, text_key
from core.embedding.clip import Backend, ClipEmbedder, backend_in, usable_cores
from core.embedding.config import BASELINE_MODEL, EmbedConfig, check_batch_size
from core.embedding.embedder import Embedder, PreparingEmbedder
from core.io.files import file_digest
from core.io.images import ImageRejected, load_image
from core.io.parquet import write_embeddings
from core.io.parts import PartWriter, embedded_ids, writing, written_by
from core.records import Dataset, Embeddings, Item, Rejected

# Decoding overlaps the model; two threads keep one batch ready beside a model on the CPU.
_DECODE_THREADS = 2
# Texts per model call when filling the cache: prompt lists are short, but a text file may not be.
_TEXT_BATCH = 256
# Cached vectors read per query when streaming a run: a few MB at most, however large the dataset.
_CACHE_READ_CHUNK = 1024
# Rows per part file when embedding into a folder: few enough files for readers at a million rows
# (each file costs a read), few enough vectors held (12 MB at 768-d) and a part every few minutes on a CPU.
ROWS_PER_PART = 4096

ProgressCallback = Callable[[int, int, float], None]


def load_embedder(config: EmbedConfig, settled: Backend | None = None) -> Embedder:
    """The embedder for `config` (computing with `settled` when another process's first batch chose it);
    raises ModelUnavailableError when CLIP weights cannot be had."""
    return BaselineEmbedder() if config.model == BASELINE_MODEL else ClipEmbedder(config, settled)


def decode_threads(embedder: Embedder) -> int:
    """Threads decoding and preparing images beside the model: two beside a model on the CPU (more would
    take its cores), every core beside one on a GPU, which decoding must keep fed."""
    return max(_DECODE_THREADS, usable_cores()) if embedder.device != "cpu" else _DECODE_THREADS


@dataclass
class EmbedRun:
    """What an embedding run produced and how."""

    embeddings: Embeddings  # accepted items in dataset order; model is the embedder's identity
    rejected: list[Rejected]  # items that could not be read or decoded, with reasons
    computed: int  # items the model embedded in this run
    from_cache: int  # items whose vectors were already cached
    seconds: float  # wall time of the whole run


class EmbeddedBatch(NamedTuple):
    """One step of an embedding stream: the vectors it made ready and the items it refused."""

    embeddings: Embeddings  # items in no particular order; model is the embedder's identity
    rejected: list[Rejected]


def embed_dataset(
    dataset: Dataset,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> EmbedRun:
    """Vectors for every readable item, from the cache where possible, committing each batch: an EmbeddingStream gathered in memory.

    Unreadable or undecodable items become rejections and the run goes on. progress(done, total,
    images_per_second) is called after every batch (once, with done == total, if nothing needed
    computing).
    """
    stream = EmbeddingStream(dataset, embedder, cache, batch_size, progress)
    batches = list(stream)
    position = {item.id: index for index, item in enumerate(dataset.items)}
    embeddings = _in_dataset_order([batch.embeddings for batch in batches], position, embedder)
    rejected = sorted(
        (row for batch in batches for row in batch.rejected), key=lambda row: position[row.name]
    )
    return EmbedRun(embeddings, rejected, stream.computed, stream.from_cache, stream.seconds)


@dataclass
class ParquetRun:
    """What an embedding run wrote to an embeddings Parquet file or folder of part files, and how."""

    model: str  # the embedder's identity, as written in the metadata
    written: int  # vectors this run wrote
    already: int  # items whose ids the folder held before this run, so were not embedded again (0 for a file)
    rejected: list[Rejected]  # files refused when the dataset was read or embedded, with reasons
    computed: int  # items the model embedded in this run
    from_cache: int  # items whose vectors were already cached
    seconds: float  # wall time of the embedding
    precision_note: str | None  # the precision the vectors are in and why; None for the baseline


def is_folder_out(out: str | Path) -> bool:
    """Whether `out` names a folder of part files (an existing folder, a name ending in "/", or one without a suffix) rather than one file."""
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir() or not Path(out).suffix


def embed_to_parquet(
    dataset: Dataset,
    config: EmbedConfig,
    out: str | Path,
    cache: EmbeddingCache | None = None,
    progress: ProgressCallback | None = None,
    rows_per_part: int = ROWS_PER_PART,
) -> ParquetRun:
    """Embed `dataset` with `config`'s model into `out`: a folder of part files written as batches are done, or one file.

    Into a folder (see is_folder_out) memory stays flat in the number of images and a run resumes
    one that was killed: ids the folder holds are not embedded again, refused files go to its
    _rejected.csv, and its runtime and precision are kept ("auto" takes the parts'; another is
    refused, as is another model). A part is written once `rows_per_part` rows are done: vectors
    done but not yet written when a run is killed are in the cache, so the next run reads them
    back rather than computing them. One file is written whole at the end, in dataset order; a
    killed run leaves none, but its batches are cached too.
    """
    if isinstance(rows_per_part, bool) or not isinstance(rows_per_part, int) or rows_per_part < 1:
        raise ValueError(f"rows_per_part must be an integer >= 1, got {rows_per_part!r}")
    if not is_folder_out(out):
        embedder = load_embedder(config)
        run = embed_dataset(dataset, embedder, cache, config.batch_size, progress)
        write_embeddings(out, run.embeddings, embedder.precision)
        return ParquetRun(
            run.embeddings.model,
            len(run.embeddings.ids),
            0,
            dataset.rejected + run.rejected,
            run.computed,
            run.from_cache,
            run.seconds,
            embedder.precision_note,
        )
    # Held before the folder is read, so a run started meanwhile is refused rather than writing the same ids.
    with writing(out, expected=len(dataset.items)):
        written = written_by(out)
        kept = _parts_backend(config, written)
        embedder = load_embedder(config, kept)
        already = embedded_ids(out)
        todo = Dataset(dataset.name, [item for item in dataset.items if item.id not in already])
        stream = EmbeddingStream(todo, embedder, cache, config.batch_size, progress)
        rejected, count = list(dataset.rejected), 0
        with PartWriter(out, embedder.identity, embedder.precision, rows_per_part) as writer:
            writer.rejected(dataset.rejected)
            for batch in stream:
                writer.rejected(batch.rejected)
                rejected += batch.rejected
                writer.add(batch.embeddings)
                count += len(batch.embeddings.ids)
            writer.flush()
        auto = "auto; " if "auto" in (config.runtime, config.precision) else ""
        note = (
            f"precision: {kept} ({auto}the runtime and precision of the parts already in {out})"
            if kept is not None
            else embedder.precision_note
        )
        return ParquetRun(
            embedder.identity,
            count,
            len(dataset.items) - len(todo.items),
            rejected,
            stream.computed,
            stream.from_cache,
            stream.seconds,
            note,
        )


def _parts_backend(config: EmbedConfig, written: tuple[str, str | None] | None) -> Backend | None:
    """The backend the parts already in a folder were computed by, when `config` leaves it to them ("auto") or names it.

    A resumed run computes with it, unchecked, so its vectors carry the parts' identity (and the
    cache rows of the run it resumes). None for parts without one (the baseline's) and when the
    config names another runtime or precision: the config decides, and the folder refuses it.
    """
    backend = None if written is None else backend_in(written[0])
    if backend is None or config.runtime not in ("auto", backend.runtime):
        return None
    return backend if config.precision in ("auto", backend.precision) else None


class EmbeddingStream:
    """The vectors of a dataset's readable items, batch by batch as they are cached or computed, so none need stay in memory.

    Making the stream reads every file's cache key and settles a CLIP embedder's precision "auto"
    on the dataset's first batch, so the embedder's identity is final before the first vectors
    come. Iterating yields EmbeddedBatch steps: the unreadable files, the first batch, the cached
    items (read in chunks), then each computed batch, cached as soon as computed. Identical files
    are decoded and embedded once; every item sharing a file comes in the step that made its
    vector. The counts below are final once the stream is exhausted.
    """

    def __init__(
        self,
        dataset: Dataset,
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.batch_size = embedder.default_batch_size() if batch_size is None else batch_size
        check_batch_size(self.batch_size)
        self.embedder, self.cache, self.progress = embedder, cache, progress
        self.started = time.perf_counter()
        self.total = len(dataset.items)
        keys, self._unreadable = _cache_keys(dataset.items)
        self._items_by_key: dict[str, list[Item]] = {}
        for item in dataset.items:
            if item.id in keys:
                self._items_by_key.setdefault(keys[item.id], []).append(item)
        with ThreadPoolExecutor(decode_threads(embedder), thread_name_prefix="decode") as pool:
            # Before the cache is read: the precision kept is part of the identity its rows are keyed by.
            self._checked, checked_now = _first_batch_checked(
                pool, embedder, dataset.items, keys, self.batch_size, cache
            )
        checked_items = self._copies(self._checked)
        self.computed = checked_items if checked_now else 0  # items the model embedded
        self.from_cache = 0 if checked_now else checked_items  # items whose vectors were cached
        self.seconds = 0.0  # wall time, from making the stream to its end

    def __iter__(self) -> Iterator[EmbeddedBatch]:
        if self._unreadable:
            yield EmbeddedBatch(
                self._embeddings({}),
                [Rejected(name, reason) for name, reason in self._unreadable.items()],
            )
        if self._checked:
            yield EmbeddedBatch(self._embeddings(self._checked), [])
        todo = [key for key in self._items_by_key if key not in self._checked]
        if self.cache is not None:
            todo = yield from self._cached(todo)
        batches = [
            todo[start : start + self.batch_size] for start in range(0, len(todo), self.batch_size)
        ]
        done = self.total - self._copies(todo)
        # Decode threads also prepare the model's inputs when the embedder can, so the main thread only runs the model.
        preparing = isinstance(self.embedder, PreparingEmbedder)
        prepare = self.embedder.prepare_image if preparing else None
        embed = (
            (lambda inputs: self.embedder.embed_prepared(np.stack(inputs)))
            if preparing
            else self.embedder.embed_images
        )
        to_decode = [{key: self._items_by_key[key][0] for key in batch} for batch in batches]
        with ThreadPoolExecutor(decode_threads(self.embedder), thread_name_prefix="decode") as pool:
            for images, failed in _decoded_batches(
                pool, to_decode, self.embedder.draft_size, prepare
            ):
                fresh = dict(zip(images, embed(list(images.values())))) if images else {}
                if fresh and self.cache is not None:
                    self.cache.put_many(self.embedder.identity, fresh)
                self.computed += self._copies(fresh)
                done += self._copies(fresh) + self._copies(failed)
                yield EmbeddedBatch(
                    self._embeddings(fresh),
                    [
                        Rejected(item.id, reason)
                        for key, reason in failed.items()
                        for item in self._items_by_key[key]
                    ],
                )
                self._report(done)
        if not batches:
            self._report(self.total)
        self.seconds = time.perf_counter() - self.started

    def _cached(self, keys: list[str]) -> Generator[EmbeddedBatch, None, list[str]]:
        """Steps of the cached vectors among `keys`, a chunk at a time; returns the keys the cache lacks."""
        missing = []
        for start in range(0, len(keys), _CACHE_READ_CHUNK):
            chunk = keys[start : start + _CACHE_READ_CHUNK]
            found = self.cache.get_many(self.embedder.identity, chunk)
            missing += [key for key in chunk if key not in found]
            if found:
                self.from_cache += self._copies(found)
                yield EmbeddedBatch(self._embeddings(found), [])
        return missing

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.total, self.computed / (time.perf_counter() - self.started))

    def _copies(self, keys: Iterable[str]) -> int:
        return sum(len(self._items_by_key[key]) for key in keys)

    def _embeddings(self, vectors: dict[str, np.ndarray]) -> Embeddings:
        items = [item for key in vectors for item in self._items_by_key[key]]
        return _embeddings_of(
            items,
            [vector for key, vector in vectors.items() for _ in self._items_by_key[key]],
            self.embedder,
        )


def _in_dataset_order(
    parts: Sequence[Embeddings], position: dict[str, int], embedder: Embedder
) -> Embeddings:
    """The parts' rows as one table in dataset order."""
    whole = Embeddings.joined(parts, embedder.identity, embedder.dim)
    order = np.argsort([position[item_id] for item_id in whole.ids], kind="stable")
    return Embeddings(
        whole.ids[order],
        whole.splits[order],
        whole.labels[order],
        whole.vectors[order],
        whole.model,
    )


def _first_batch_checked(
    pool: ThreadPoolExecutor,
    embedder: Embedder,
    items: Sequence[Item],
    keys: dict[str, str],
    batch_size: int,
    cache: EmbeddingCache | None,
) -> tuple[dict[str, np.ndarray], bool]:
    """Vectors by key of the first batch of distinct readable files, when they settled the embedder's precision "auto"
    (else none), and whether they were computed now rather than read from the cache.

    The batch is the dataset's first, cached or not: the check compares each faster runner with
    torch fp32 on the user's own images. Every runner's vectors are cached, so a later run of the
    same data settles the check from the cache without the model. Should none of it decode, the
    check stays awaited and this run is torch fp32.
    """
    if not embedder.awaits_precision_check:
        return {}, False
    first: dict[str, Item] = {}
    for item in items:
        if len(first) == batch_size:
            break
        if item.id in keys:
            first.setdefault(keys[item.id], item)
    if not first:
        return {}, False
    # Read once: the whole batch settles the check when every vector it needs is cached; else the
    # decoded part of it does, computing what is missing.
    cached = (
        {identity: cache.get_many(identity, first) for identity in embedder.check_identities}
        if cache is not None
        else {}
    )
    known = _complete_rows(cached, list(first))
    if embedder.settle_precision(known) is None:
        inputs, _ = next(
            _decoded_batches(pool, [first], embedder.draft_size, embedder.prepare_image)
        )
        if not inputs:
            return {}, False
        keys = list(inputs)
        known = _complete_rows(cached, keys)
        computed = embedder.settle_precision(known, np.stack(list(inputs.values())))
        if cache is not None:
            for identity, vectors in computed.items():
                cache.put_many(identity, dict(zip(keys, vectors)))
        known.update(computed)
    else:
        keys, computed = list(first), {}
    chosen = known.get(embedder.identity)
    # A fallback the check did not compute (bf16 as chosen, once OpenVINO is refused) embeds this batch with the rest.
    return (
        ({}, False) if chosen is None else (dict(zip(keys, chosen)), embedder.identity in computed)
    )


def _complete_rows(
    rows_by_identity: dict[str, dict[str, np.ndarray]], keys: list[str]
) -> dict[str, np.ndarray]:
    """The vectors of `keys` in order, by identity, for each identity whose rows hold all of them."""
    return {
        identity: np.stack([rows[key] for key in keys])
        for identity, rows in rows_by_identity.items()
        if all(key in rows for key in keys)
    }


def _cache_keys(items: Sequence[Item]) -> tuple[dict[str, str], dict[str, str]]:
    """Cache key by item id, and the reason by item id for files that cannot be read."""
    keys, unreadable = {}, {}
    for item in items:
        try:
            keys[item.id] = file_digest(item.path)
        except OSError as error:
            unreadable[item.id] = f"cannot read the file: {error.strerror or error}"
    return keys, unreadable


def _decoded_batches(
    pool: ThreadPoolExecutor,
    batches: list[dict[str, Item]],
    draft_size: int | None,
    prepare: Callable[[Image.Image], np.ndarray] | None,
) -> Iterator[tuple[dict[str, Image.Image | np.ndarray], dict[str, str]]]:
    """Per batch, images (or prepared inputs) by key and rejection reasons by key; the next batch decodes meanwhile."""
    if not batches:
        return
    upcoming = _submit_decodes(pool, batches[0], draft_size, prepare)
    for following in [*batches[1:], None]:
        current = upcoming
        upcoming = _submit_decodes(pool, following, draft_size, prepare) if following else {}
        results = {key: future.result() for key, future in current.items()}
        yield (
            {
                key: result
                for key, result in results.items()
                if not isinstance(result, ImageRejected)
            },
            {
                key: result.reason
                for key, result in results.items()
                if isinstance(result, ImageRejected)
            },
        )


def _submit_decodes(
    pool: ThreadPoolExecutor, batch: dict[str, Item], draft_size: int | None, prepare
) -> dict[str, Future]:
    return {key: pool.submit(_decode, item, draft_size, prepare) for key, item in batch.items()}


def _decode(
    item: Item, draft_size: int | None, prepare
) -> Image.Image | np.ndarray | ImageRejected:
    try:
        image = load_image(item.path, name=item.id, draft_size=draft_size)
    except ImageRejected as rejection:
        return rejection
    return image if prepare is None else prepare(image)


def _embeddings_of(
    items: Sequence[Item], vectors: Sequence[np.ndarray], embedder: Embedder
) -> Embeddings:
    return Embeddings(
        ids=np.array([item.id for item in items], dtype=str),
        splits=np.array([item.split for item in items], dtype=str),
        labels=np.array([item.label for item in items], dtype=object),
        vectors=np.stack(vectors).astype(np.float32)
        if vectors
        else np.empty((0, embedder.dim), np.float32),
        model=embedder.identity,
    )


def embed_texts_cached(
    texts: Sequence[str], embedder: Embedder, cache: EmbeddingCache | None = None
) -> np.ndarray:
    """Vectors for `texts` in order, from the cache where possible; new ones are cached per batch."""
    keys = [text_key(text) for text in texts]
    vectors = cache.get_many(embedder.identity, keys) if cache is not None else {}
    missing = list(dict.fromkeys(text for text, key in zip(texts, keys) if key not in vectors))
    for start in range(0, len(missing), _TEXT_BATCH):
        chunk = missing[start : start + _TEXT_BATCH]
        fresh = dict(zip(map(text_key, chunk), embedder.embed_texts(chunk)))
        if cache is not None:
            cache.put_many(embedder.identity, fresh)
        vectors.update(fresh)
    return (
        np.stack([vectors[key] for key in keys])
        if keys
        else np.empty((0, embedder.dim), np.float32)
    )
