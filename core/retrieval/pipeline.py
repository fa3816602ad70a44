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
from core.retrieval.predict import place_distractor, search_labels


@dataclass(frozen=True)
class PredictConfig:
    """How test items are scored, flagged and labelled."""

    k: int = field(default=5, metadata={"help": "labels per prediction row (MAP@k) and neighbours shown"})
    score_mode: str = field(default="max", metadata={"help": "distractor score: best similarity (max, seed 001) or mean of the top score_k", "choices": SCORE_MODES})
    score_k: int = field(default=5, metadata={"help": "neighbours averaged when score_mode is mean"})
    contamination: float = field(default=0.3, metadata={"help": "share of test flagged when no threshold is given (seed 001: 30%); with auto, the simulated share"})
    threshold: float | None = field(default=None, metadata={"help": "a fixed cosine similarity threshold: test items scoring below it are flagged; overrides contamination"})
    auto: bool = field(default=False, metadata={"help": "choose the threshold on train with held-out classes as pseudo-distractors (seed 004)"})
    validation_rounds: int = field(default=5, metadata={"help": "random held-out splits whose thresholds are averaged when auto"})
    seed: int = field(default=0, metadata={"help": "seeds the held-out class draw"})

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


def verdict_precisions(rows: list[list[str]], truth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's AP@k if flagged (its row after "-1") and if kept (its row as is), from ranked labels and truth.

    These are the two arrays `ThresholdSweep` sums to give MAP@k at any threshold at once.
    """
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
    """Each query's top max(k, score_k) neighbours, its k distinct labels ranked and its distractor score."""
    neighbours, labels = search_labels(index, gallery_labels, query_vectors, config.k, max(config.k, config.score_k))
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
        if_flagged, if_kept = verdict_precisions(labels, truth, config.k)
        sweep = ThresholdSweep(scores, if_flagged, if_kept, truth == DISTRACTOR)
    return neighbours, Retrieval(labels, scores, sweep)


@dataclass(frozen=True)
class ValidationResult:
    """Thresholds chosen on train with some classes held out as pseudo-distractors (seed 004)."""

    threshold: float  # mean of the per-round best thresholds
    map_at_k: float  # mean validation MAP@k at each round's best threshold
    round_thresholds: list[float]  # best threshold of each round
    held_out_classes: int  # classes held out per round


def check_train_labels(labels) -> None:
    """Refuse train labels that are missing or "-1": every gallery item must name its class."""
    missing = [row for row, label in enumerate(labels) if label is None or label == DISTRACTOR]
    if missing:
        raise ValueError(
            f'every train item needs a class label (not None, not "{DISTRACTOR}"); {len(missing)} lack one, '
            f"the first at row {missing[0]}"
        )


# Holding classes out leaves at least 2 in the gallery, so pseudo-distractors need 4+ classes to
# leave some to hold out; known queries need a class with 2+ images (one query, one in the gallery).
MIN_CLASSES_TO_HOLD_OUT = 4


def check_classes_to_hold_out(labels: np.ndarray, purpose: str, otherwise: str) -> None:
    """Refuse train labels that `pseudo_distractor_split` cannot split: too few classes, or no class with 2+ images.

    `purpose` says what needs the split and `otherwise` what the user can do instead; both are shown.
    """
    counts = Counter(labels.tolist())
    if len(counts) < MIN_CLASSES_TO_HOLD_OUT or max(counts.values(), default=0) < 2:
        raise ValueError(
            f"{purpose} needs at least {MIN_CLASSES_TO_HOLD_OUT} train classes and a class with 2+ images; "
            f"train has {len(counts)} classes and at most {max(counts.values(), default=0)} images in one — {otherwise}"
        )


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
    check_classes_to_hold_out(
        labels, "choosing the threshold by validation", "use a contamination rate or a fixed threshold"
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
    neighbours: Neighbours  # test against train: each item's top max(k, score_k) train neighbours
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
    check_train_labels(train.labels)
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


def load_embeddings(source, embed_config=None, cache=None, progress=None, work_dir=None, embedder=None) -> LoadedEmbeddings:
    """Vectors for a dataset folder or zip (embedded with the config's model, cached) or a Parquet file.

    `embedder` is the config's model already loaded (a server shares one between users); without
    it the model is loaded here.
    """
    if is_embeddings_file(source):
        embeddings, rejected = read_embeddings_checked(source)
        return LoadedEmbeddings(embeddings, rejected)
    # torch loads only when images must be embedded, so Parquet analysis starts fast.
    from core.embedding.config import EmbedConfig
    from core.embedding.runner import embed_dataset, load_embedder

    dataset = load_dataset(source, work_dir=work_dir)
    config = embed_config or EmbedConfig()
    run = embed_dataset(dataset, embedder or load_embedder(config), cache, config.batch_size, progress)
    return LoadedEmbeddings(run.embeddings, dataset.rejected + run.rejected, run.computed, run.from_cache, run.seconds)
