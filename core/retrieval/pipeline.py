"""The end-to-end analysis: test vs train neighbours, distractor threshold, predictions and their scores."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.retrieval.distractors import (
    SCORE_MODES,
    DbscanConfig,
    ThresholdSweep,
    dbscan_flags,
    distractor_scores,
    leave_one_out_scores,
)
from core.retrieval.index import Neighbours, VectorIndex
from core.io.layouts import load_dataset
from core.io.parquet import read_embeddings_checked
from core.retrieval.metrics import average_precision_at_k, distractor_report, mean_precision_at_k, top1_accuracy
from core.retrieval.predict import neighbours_needed, place_distractor, rank_labels


@dataclass(frozen=True)
class PredictConfig:
    """How test items are scored, flagged and labelled."""

    k: int = 5  # labels per prediction row (MAP@k) and neighbours shown
    score_mode: str = "max"  # distractor score: best similarity ("max", seed 001) or mean of top score_k
    score_k: int = 5  # neighbours averaged when score_mode is "mean"
    contamination: float = 0.3  # share of test flagged when no threshold is given (seed 001: 30%)
    threshold: float | None = None  # a fixed similarity threshold; overrides contamination
    auto: bool = False  # choose the threshold on train with held-out classes as pseudo-distractors (seed 004)
    validation_rounds: int = 5  # random held-out splits whose thresholds are averaged when auto
    seed: int = 0  # seeds the held-out class draw

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if self.score_k < 1:
            raise ValueError(f"score_k must be at least 1, got {self.score_k}")
        if not 0.0 <= self.contamination <= 1.0:
            raise ValueError(f"contamination must be a share between 0 and 1, got {self.contamination}")
        if self.threshold is not None and self.auto:
            raise ValueError("give either a fixed threshold or auto, not both")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0 + 1e-6:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.validation_rounds < 1:
            raise ValueError(f"validation_rounds must be at least 1, got {self.validation_rounds}")


def _verdict_precisions(rows: list[list[str]], truth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's average precision if flagged and if kept, so MAP follows any threshold at once."""
    flagged_rows = place_distractor(rows, np.ones(len(rows), bool), k)
    kept_rows = place_distractor(rows, np.zeros(len(rows), bool), k)
    if_flagged = np.array([average_precision_at_k(t, r, k) for t, r in zip(truth, flagged_rows)])
    if_kept = np.array([average_precision_at_k(t, r, k) for t, r in zip(truth, kept_rows)])
    return if_flagged, if_kept


@dataclass(frozen=True)
class Retrieval:
    """Queries against a labelled gallery: ranked labels, scores and, with truth, the threshold sweep."""

    labels: list[list[str]]  # distinct labels per query, best first, no "-1"
    scores: np.ndarray  # distractor score per query
    sweep: ThresholdSweep


def search_and_rank(
    index: VectorIndex, gallery_labels: np.ndarray, query_vectors: np.ndarray, config: PredictConfig
) -> tuple[Neighbours, list[list[str]], np.ndarray]:
    """Neighbours deep enough for k distinct labels, each query's ranked labels and its distractor score."""
    depth = max(neighbours_needed(gallery_labels, config.k), min(config.score_k, len(index)))
    neighbours = index.search(query_vectors, depth)
    labels = rank_labels(neighbours, gallery_labels, config.k)
    return neighbours, labels, distractor_scores(neighbours, config.score_mode, config.score_k)


def retrieve(
    gallery_vectors: np.ndarray,
    gallery_labels: np.ndarray,
    query_vectors: np.ndarray,
    config: PredictConfig,
    truth: np.ndarray | None = None,
) -> tuple[Neighbours, Retrieval]:
    """Search queries against the gallery and score them; with truth, MAP and detection follow any threshold."""
    neighbours, labels, scores = search_and_rank(VectorIndex(gallery_vectors), gallery_labels, query_vectors, config)
    if truth is None:
        sweep = ThresholdSweep(scores)
    else:
        if_flagged, if_kept = _verdict_precisions(labels, truth, config.k)
        sweep = ThresholdSweep(scores, if_flagged, if_kept, truth == DISTRACTOR)
    return neighbours, Retrieval(labels, scores, sweep)


@dataclass(frozen=True)
class ValidationResult:
    """Thresholds chosen on train with some classes held out as pseudo-distractors (seed 004)."""

    threshold: float  # mean of the per-round best thresholds
    map_at_k: float  # mean validation MAP@k at each round's best threshold
    round_thresholds: list[float]  # best threshold of each round
    held_out_classes: int  # classes held out per round


def pseudo_distractor_split(labels: np.ndarray, contamination: float, rng: np.random.Generator):
    """Gallery / query rows of train: held-out classes become "-1" queries, one image of each other class a query."""
    classes = list(dict.fromkeys(labels.tolist()))
    rng.shuffle(classes)
    counts = Counter(labels.tolist())
    known_queries = sum(1 for c in classes if counts[c] >= 2)
    held, distractor_queries = set(), 0
    for cls in classes:
        if distractor_queries >= contamination * (distractor_queries + known_queries) or len(held) >= len(classes) - 2:
            break
        held.add(cls)
        distractor_queries += counts[cls]
        known_queries -= counts[cls] >= 2
    query_rows, truth, gallery_rows = [], [], []
    for cls in classes:
        rows = np.flatnonzero(labels == cls)
        if cls in held:
            query_rows.extend(rows)
            truth.extend([DISTRACTOR] * len(rows))
        elif len(rows) >= 2:
            chosen = rng.choice(rows)
            query_rows.append(chosen)
            truth.append(cls)
            gallery_rows.extend(r for r in rows if r != chosen)
        else:
            gallery_rows.extend(rows)
    return np.array(gallery_rows), np.array(query_rows), np.array(truth, dtype=object), len(held)


def validate_threshold(train: Embeddings, config: PredictConfig) -> ValidationResult:
    """Pick the threshold that maximises MAP@k on train with held-out classes as distractors."""
    labels = train.labels.astype(object)
    n_classes = len(set(labels.tolist()))
    if n_classes < 4 or Counter(labels.tolist()).most_common(1)[0][1] < 2:
        raise ValueError(
            f"choosing the threshold by validation needs at least 4 train classes and a class with 2+ "
            f"images; train has {n_classes} classes — use a contamination rate or a fixed threshold"
        )
    rng = np.random.default_rng(config.seed)
    thresholds, values, held = [], [], 0
    for _ in range(config.validation_rounds):
        gallery, queries, truth, held = pseudo_distractor_split(labels, config.contamination, rng)
        _, result = retrieve(train.vectors[gallery], labels[gallery], train.vectors[queries], config, truth)
        threshold, value = result.sweep.best_map_threshold()
        thresholds.append(threshold)
        values.append(value)
    return ValidationResult(float(np.mean(thresholds)), float(np.mean(values)), thresholds, held)


@dataclass
class Analysis:
    """Test items against train: neighbours, scores, ranked labels and everything a threshold changes."""

    train: Embeddings
    test: Embeddings
    config: PredictConfig
    neighbours: Neighbours  # test against train, deep enough for k distinct labels
    retrieval: Retrieval
    threshold: float  # the threshold chosen by the config
    threshold_source: str  # how it was chosen, for people
    validation: ValidationResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def scores(self) -> np.ndarray:
        return self.retrieval.scores

    @property
    def sweep(self) -> ThresholdSweep:
        return self.retrieval.sweep

    @property
    def truth(self) -> np.ndarray | None:
        return self.test.labels.astype(object) if self.test.has_test_truth else None

    def flags(self, threshold: float | None = None) -> np.ndarray:
        return self.scores < (self.threshold if threshold is None else threshold)

    def predictions(self, threshold: float | None = None, flags: np.ndarray | None = None) -> list[list[str]]:
        return place_distractor(self.retrieval.labels, self.flags(threshold) if flags is None else flags, self.config.k)

    @cached_property
    def train_loo_scores(self) -> np.ndarray:
        return leave_one_out_scores(self.train.vectors, self.config.score_mode, self.config.score_k)

    @cached_property
    def mean_precision(self) -> float | None:
        """mP@k of test items whose true class is in train (threshold-independent)."""
        if self.truth is None:
            return None
        train_labels = self.train.labels.astype(object)
        counts = Counter(train_labels.tolist())
        neighbour_labels = train_labels[self.neighbours.indices[:, : self.config.k]]
        relevant = [counts.get(label, 0) for label in self.truth]
        if not any(relevant):
            return None
        return mean_precision_at_k(self.truth, neighbour_labels, relevant, self.config.k)

    def dbscan(self, config: DbscanConfig = DbscanConfig()) -> np.ndarray:
        return dbscan_flags(self.train.vectors, self.test.vectors, config)

    def report(self, threshold: float | None = None, flags: np.ndarray | None = None) -> dict:
        """Counts and, with test truth, MAP@k, mP@k, top-1 and distractor detection for one verdict."""
        threshold = self.threshold if threshold is None else threshold
        flags = self.flags(threshold) if flags is None else flags
        report = {
            "threshold": float(threshold),
            "test_items": int(len(flags)),
            "flagged": int(flags.sum()),
            "flagged_share": float(flags.mean()) if len(flags) else 0.0,
        }
        if self.truth is not None:
            rows = self.predictions(flags=flags)
            k = self.config.k
            report[f"MAP@{k}"] = float(np.mean([average_precision_at_k(t, r, k) for t, r in zip(self.truth, rows)]))
            report[f"mP@{k}"] = self.mean_precision
            report["top1_accuracy"] = top1_accuracy(self.truth, rows)
            detection = distractor_report(self.truth == DISTRACTOR, flags, self.scores)
            report.update({f"distractor_{key}": value for key, value in detection.as_dict().items()})
        return report


def analyse(embeddings: Embeddings, config: PredictConfig = PredictConfig()) -> Analysis:
    """Search test against train, score distractors and choose the threshold the config asks for."""
    train, test = embeddings.subset(TRAIN), embeddings.subset(TEST)
    if len(train.ids) == 0:
        raise ValueError("the train split is empty: label some images under train/<label>/")
    if len(test.ids) == 0:
        raise ValueError("the test split is empty: put the images to label under test/")
    if any(label is None or label == DISTRACTOR for label in train.labels):
        raise ValueError('every train item needs a class label (and not "-1")')
    notes = []
    n_classes = len(set(train.labels.tolist()))
    if n_classes < config.k:
        notes.append(f"train has {n_classes} classes, fewer than k={config.k}: prediction rows are shorter")
    truth = test.labels.astype(object) if test.has_test_truth else None
    neighbours, retrieval = retrieve(train.vectors, train.labels.astype(object), test.vectors, config, truth)
    validation = None
    if config.threshold is not None:
        threshold, source = config.threshold, "fixed threshold"
    elif config.auto:
        validation = validate_threshold(train, config)
        threshold = validation.threshold
        source = (
            f"validation on train ({validation.held_out_classes} classes held out as distractors, "
            f"{config.validation_rounds} rounds, MAP@{config.k} {validation.map_at_k:.3f})"
        )
    else:
        threshold = retrieval.sweep.threshold_for(config.contamination)
        source = f"contamination {config.contamination:.0%}"
        flagged = int(retrieval.sweep.flagged_count(threshold))
        if flagged != round(config.contamination * retrieval.sweep.n):
            notes.append(
                f"test scores tie at the threshold {threshold:.3f}: it flags {flagged} of {retrieval.sweep.n} "
                f"test items, not the {config.contamination:.0%} asked for"
            )
    return Analysis(train, test, config, neighbours, retrieval, float(threshold), source, validation, notes)


@dataclass
class LoadedEmbeddings:
    """Embeddings ready for analysis, with every file that was refused on the way."""

    embeddings: Embeddings
    rejected: list  # core.records.Rejected, from reading the source and from embedding it
    computed: int = 0  # vectors computed by the model in this run
    from_cache: int = 0  # vectors found in the cache
    seconds: float = 0.0  # time spent embedding

    def summary(self) -> str:
        return f"{len(self.embeddings.ids)} accepted, {len(self.rejected)} rejected"


def is_embeddings_file(source) -> bool:
    return str(source).lower().endswith(".parquet")


def load_embeddings(source, embed_config=None, cache=None, progress=None, work_dir=None) -> LoadedEmbeddings:
    """Vectors for a dataset folder or zip (embedded with the config's model, cached) or a Parquet file."""
    if is_embeddings_file(source):
        embeddings, rejected = read_embeddings_checked(source)
        return LoadedEmbeddings(embeddings, rejected)
    # torch loads only when images must be embedded, so Parquet analysis starts fast.
    from core.embedding.config import EmbedConfig
    from core.embedding.runner import embed_dataset, load_embedder

    dataset = load_dataset(source, work_dir=work_dir)
    config = embed_config or EmbedConfig()
    run = embed_dataset(dataset, load_embedder(config), cache, config.batch_size, progress)
    return LoadedEmbeddings(run.embeddings, dataset.rejected + run.rejected, run.computed, run.from_cache, run.seconds)
