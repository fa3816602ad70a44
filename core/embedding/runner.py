"""The batched, cached embedding run over a dataset, cached text embedding, and choosing the embedder for a config."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.embedding.baseline import BaselineEmbedder
from core.embedding.cache import EmbeddingCache, file_key, text_key
from core.embedding.clip import ClipEmbedder
from core.embedding.config import BASELINE_MODEL, EmbedConfig, check_batch_size
from core.embedding.embedder import Embedder, PreparingEmbedder
from core.io.images import ImageRejected, load_image
from core.records import Dataset, Embeddings, Item, Rejected

# Decoding overlaps the model; two threads keep one batch ready on a small machine.
_DECODE_THREADS = 2
# Texts per model call when filling the cache: prompt lists are short, but a text file may not be.
_TEXT_BATCH = 256

ProgressCallback = Callable[[int, int, float], None]


def load_embedder(config: EmbedConfig) -> Embedder:
    """The embedder for `config`; raises ModelUnavailableError when CLIP weights cannot be had."""
    return BaselineEmbedder() if config.model == BASELINE_MODEL else ClipEmbedder(config)


def precision_note(embedder: Embedder) -> str | None:
    """The line saying which precision the embedder computes in and why; None for the baseline, which has no precision."""
    return embedder.precision_note if isinstance(embedder, ClipEmbedder) else None


@dataclass
class EmbedRun:
    """What an embedding run produced and how."""

    embeddings: Embeddings  # accepted items in dataset order; model is the embedder's identity
    rejected: list[Rejected]  # items that could not be read or decoded, with reasons
    computed: int  # items the model embedded in this run
    from_cache: int  # items whose vectors were already cached
    seconds: float  # wall time of the whole run


def embed_dataset(
    dataset: Dataset,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> EmbedRun:
    """Vectors for every readable item, from the cache where possible, committing each batch.

    Unreadable or undecodable items become rejections and the run goes on. progress(done, total,
    images_per_second) is called after every batch (once, with done == total, if nothing needed
    computing). Identical files are decoded and embedded once. A CLIP embedder whose precision
    "auto" awaits its check settles it on the dataset's first batch before anything else.
    """
    batch_size = EmbedConfig.batch_size if batch_size is None else batch_size
    check_batch_size(batch_size)
    started = time.perf_counter()
    keys, unreadable = _content_keys(dataset.items)
    copies = Counter(keys.values())
    # Decode threads also prepare the model's inputs when the embedder can, so the main thread only runs the model.
    preparing = isinstance(embedder, PreparingEmbedder)
    prepare = embedder.prepare_image if preparing else None
    embed = (lambda inputs: embedder.embed_prepared(np.stack(inputs))) if preparing else embedder.embed_images
    with ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="decode") as pool:
        # Before the cache is read: the precision kept is part of the identity its rows are keyed by.
        checked, computed_for_check = _first_batch_checked(pool, embedder, dataset.items, keys, batch_size, cache)
        vectors = cache.get_many(embedder.identity, (key for key in copies if key not in checked)) if cache is not None else {}
        from_cache = sum(copies[key] for key in vectors) + sum(copies[key] for key in checked if not computed_for_check)
        vectors.update(checked)

        todo: dict[str, Item] = {}
        for item in dataset.items:
            if item.id in keys and keys[item.id] not in vectors:
                todo.setdefault(keys[item.id], item)
        pending = list(todo.items())
        batches = [dict(pending[start : start + batch_size]) for start in range(0, len(pending), batch_size)]
        total, computed = len(dataset.items), sum(copies[key] for key in checked) if computed_for_check else 0
        done = total - sum(copies[key] for key in todo)
        undecodable: dict[str, str] = {}
        for images, failed in _decoded_batches(pool, batches, embedder.draft_size, prepare):
            undecodable.update(failed)
            if images:
                fresh = dict(zip(images, embed(list(images.values()))))
                if cache is not None:
                    cache.put_many(embedder.identity, fresh)
                vectors.update(fresh)
            computed += sum(copies[key] for key in images)
            done += sum(copies[key] for key in (*images, *failed))
            if progress is not None:
                progress(done, total, computed / (time.perf_counter() - started))
    if progress is not None and not batches:
        progress(total, total, computed / (time.perf_counter() - started))

    accepted = [item for item in dataset.items if keys.get(item.id) in vectors]
    rejected = [
        Rejected(item.id, unreadable[item.id] if item.id in unreadable else undecodable[keys[item.id]])
        for item in dataset.items
        if keys.get(item.id) not in vectors
    ]
    return EmbedRun(
        embeddings=_embeddings_of(accepted, [vectors[keys[item.id]] for item in accepted], embedder),
        rejected=rejected,
        computed=computed,
        from_cache=from_cache,
        seconds=time.perf_counter() - started,
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

    The batch is the dataset's first, cached or not: the check compares both precisions on the
    user's own images. Both precisions' vectors are cached, so a later run of the same data settles
    the check from the cache without the model. Should none of it decode, "auto" stays unsettled
    and this run is fp32.
    """
    if not (isinstance(embedder, ClipEmbedder) and embedder.awaits_precision_check):
        return {}, False
    first: dict[str, Item] = {}
    for item in items:
        if len(first) == batch_size:
            break
        if item.id in keys:
            first.setdefault(keys[item.id], item)
    if cache is not None and first:
        stored = {precision: cache.get_many(embedder.identity_in(precision), first) for precision in ("fp32", "bf16")}
        if all(len(found) == len(first) for found in stored.values()):
            embedder.settle_precision(*(np.stack([stored[precision][key] for key in first]) for precision in ("fp32", "bf16")))
            return stored[embedder.precision], False
    inputs, _ = next(_decoded_batches(pool, [first], embedder.draft_size, embedder.prepare_image))
    if not inputs:
        return {}, False
    both = {precision: dict(zip(inputs, vectors)) for precision, vectors in embedder.check_precision(np.stack(list(inputs.values()))).items()}
    if cache is not None:
        for precision, vectors in both.items():
            cache.put_many(embedder.identity_in(precision), vectors)
    return both[embedder.precision], True


def _content_keys(items: Sequence[Item]) -> tuple[dict[str, str], dict[str, str]]:
    """Cache key by item id, and the reason by item id for files that cannot be read."""
    keys, unreadable = {}, {}
    for item in items:
        try:
            keys[item.id] = file_key(item.path)
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
            {key: result for key, result in results.items() if not isinstance(result, ImageRejected)},
            {key: result.reason for key, result in results.items() if isinstance(result, ImageRejected)},
        )


def _submit_decodes(
    pool: ThreadPoolExecutor, batch: dict[str, Item], draft_size: int | None, prepare
) -> dict[str, Future]:
    return {key: pool.submit(_decode, item, draft_size, prepare) for key, item in batch.items()}


def _decode(item: Item, draft_size: int | None, prepare) -> Image.Image | np.ndarray | ImageRejected:
    try:
        image = load_image(item.path, name=item.id, draft_size=draft_size)
    except ImageRejected as rejection:
        return rejection
    return image if prepare is None else prepare(image)


def _embeddings_of(items: Sequence[Item], vectors: Sequence[np.ndarray], embedder: Embedder) -> Embeddings:
    return Embeddings(
        ids=np.array([item.id for item in items], dtype=str),
        splits=np.array([item.split for item in items], dtype=str),
        labels=np.array([item.label for item in items], dtype=object),
        vectors=np.stack(vectors).astype(np.float32) if vectors else np.empty((0, embedder.dim), np.float32),
        model=embedder.identity,
    )


def embed_texts_cached(texts: Sequence[str], embedder: Embedder, cache: EmbeddingCache | None = None) -> np.ndarray:
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
    return np.stack([vectors[key] for key in keys]) if keys else np.empty((0, embedder.dim), np.float32)
