"""A source's vectors, ready for analysis: an embeddings Parquet read as it is, or a dataset read and embedded (cached)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.io.layouts import load_dataset
from core.io.parquet import is_embeddings_source, read_embeddings_checked
from core.progress import Watch
from core.records import Embeddings


@dataclass
class LoadedEmbeddings:
    """Embeddings ready for analysis, with every file that was refused on the way."""

    embeddings: Embeddings
    rejected: list  # core.records.Rejected, from reading the source and from embedding it
    computed: int = 0  # vectors computed by the model in this run
    from_cache: int = 0  # vectors found in the cache
    seconds: float = 0.0  # time spent embedding
    # the precision the model computed in and why; None when nothing was embedded
    precision_note: str | None = None
    name: str = ""  # the source's name, for people to read
    # image file by item id; none for an embeddings Parquet
    images: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.embeddings.ids)} accepted, {len(self.rejected)} rejected"


def is_embeddings_file(source) -> bool:
    """A Parquet file or a folder of Parquet part files, as the dashboard recognises them."""
    return is_embeddings_source(Path(source))


def load_embeddings(
    source,
    embed_config=None,
    cache=None,
    progress=None,
    work_dir=None,
    embedder=None,
    watch: Watch = Watch(),
) -> LoadedEmbeddings:
    """Vectors for a dataset source (embedded with the config's model, cached) or a Parquet file.

    `embedder` is the config's model already loaded (a server shares one between users); without
    it the model is loaded here. `watch` follows reading the source (a Hugging Face dataset's
    images are written out split by split).
    """
    if is_embeddings_file(source):
        embeddings, rejected = read_embeddings_checked(source)
        return LoadedEmbeddings(embeddings, rejected, name=Path(source).stem)
    # torch loads only when images must be embedded, so Parquet analysis starts fast.
    from core.embedding.config import EmbedConfig
    from core.embedding.runner import embed_dataset, load_embedder

    dataset = load_dataset(source, work_dir=work_dir, watch=watch)
    config = embed_config or EmbedConfig()
    embedder = embedder or load_embedder(config)
    run = embed_dataset(dataset, embedder, cache, config.batch_size, progress)
    return LoadedEmbeddings(
        run.embeddings,
        dataset.rejected + run.rejected,
        run.computed,
        run.from_cache,
        run.seconds,
        embedder.precision_note,
        dataset.name,
        {item.id: item.path for item in dataset.items},
    )
