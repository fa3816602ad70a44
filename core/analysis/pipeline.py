"""The end-to-end analysis: test vs train neighbours, distractor threshold, predictions and their scores."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from core.analysis.report import AnalysisReport, Measured
from core.detection.distractors import (
    DbscanConfig,
    ThresholdSweep,
    dbscan_flags,
    distractor_scores,
    leave_one_out_neighbours,
    leave_one_out_scores_of,
)
from core.detection.metrics import distractor_report
from core.prediction.config import PredictConfig
from core.prediction.metrics import average_precision_at_k, mean_precision_at_k, top1_accuracy
from core.prediction.placement import (
    PLACEMENTS,
    PlacementModel,
    Pooling,
    TrainEvidence,
    fit_placement,
    kept_positions,
    pooling_of,
    positions_for,
    realised_precisions,
)
from core.prediction.predict import place_minus_one, search_labels, true_ranks
from core.prediction.validation import (
    INTERVAL_LEFT_OUT,
    Calibration,
    ValidationResult,
    bootstrap_curves,
    check_classes_to_hold_out,
    check_train_labels,
    class_bootstrap,
    conformal_threshold,
    evidence_for,
    predictive_interval,
    share_interval,
    train_evidence_map,
    validate_threshold,
)
from core.progress import Watch
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings
from core.search.index import Neighbours, VectorIndex
from core.search.store import SearchResults, SearchStore, search_key


def verdict_precisions(
    rows: list[list[str]], truth: np.ndarray, k: int, kept: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's AP@k if flagged ("-1" first) and if kept ("-1" at its `kept` position, by default nowhere).

    These are the two arrays `ThresholdSweep` sums to give MAP@k at any threshold at once.
    """
    ranks, is_distractor = true_ranks(rows, truth), np.asarray(truth == DISTRACTOR, bool)
    kept = np.zeros(len(rows), np.int64) if kept is None else kept
    return realised_precisions(
        ranks, is_distractor, np.ones(len(rows), np.int64), k
    ), realised_precisions(ranks, is_distractor, kept, k)


@dataclass(frozen=True)
class Retrieval:
    """Queries against a labelled gallery: ranked labels, scores and, with truth, the threshold sweep."""

    labels: list[list[str]]  # distinct labels per query, best first, no "-1"
    scores: np.ndarray  # distractor score per query
    sweep: ThresholdSweep


def search_width(config: PredictConfig) -> int:
    """Neighbours kept per item, test against train and train against itself: enough for k labels and the score."""
    return max(config.k, config.score_k)


def search_and_rank(
    index: VectorIndex,
    gallery_labels: np.ndarray,
    query_vectors: np.ndarray,
    config: PredictConfig,
    watch: Watch = Watch(),
) -> tuple[Neighbours, list[list[str]], np.ndarray]:
    """Each query's top max(k, score_k) neighbours, its k distinct labels ranked and its distractor score."""
    neighbours, labels = search_labels(
        index, gallery_labels, query_vectors, config.k, search_width(config), watch
    )
    return neighbours, labels, distractor_scores(neighbours, config.score_mode, config.score_k)


def retrieve(
    gallery_vectors: np.ndarray,
    gallery_labels: np.ndarray,
    query_vectors: np.ndarray,
    config: PredictConfig,
    truth: np.ndarray | None = None,
    watch: Watch = Watch(),
) -> tuple[Neighbours, Retrieval]:
    """Search queries against the gallery and score them; with truth, MAP and detection follow any threshold."""
    neighbours, labels, scores = search_and_rank(
        VectorIndex(gallery_vectors), gallery_labels, query_vectors, config, watch
    )
    return neighbours, ranked_retrieval(labels, scores, config.k, truth)


def ranked_retrieval(
    labels: list[list[str]], scores: np.ndarray, k: int, truth: np.ndarray | None = None
) -> Retrieval:
    """The retrieval of searched queries: with truth, MAP and detection follow any threshold."""
    if truth is None:
        return Retrieval(labels, scores, ThresholdSweep(scores))
    if_flagged, if_kept = verdict_precisions(labels, truth, k)
    return Retrieval(
        labels, scores, ThresholdSweep(scores, if_flagged, if_kept, truth == DISTRACTOR)
    )


# What the watch of an analysis hears after the test search.
LEAVE_ONE_OUT_STAGE = "scoring train items against the rest of train"
PLACEMENT_STAGE = "fitting the placement model on train"


def searched(
    train: Embeddings,
    test: Embeddings,
    config: PredictConfig,
    store: SearchStore,
    watch: Watch = Watch(),
) -> SearchResults:
    """Test against train and train against itself, read from `store` when it has them, else searched and stored."""
    train_labels = train.labels.astype(object)
    settings = f"k={config.k} score_mode={config.score_mode} score_k={config.score_k}"
    key = search_key(train.vectors, train_labels, test.vectors, settings)
    stored = store.get(key, len(train.ids), len(test.ids))
    if stored is not None:
        return stored
    neighbours, labels, scores = search_and_rank(
        VectorIndex(train.vectors), train_labels, test.vectors, config, watch
    )
    watch.step(0, 1, LEAVE_ONE_OUT_STAGE)
    train_neighbours = leave_one_out_neighbours(train.vectors, search_width(config))
    loo_scores = leave_one_out_scores_of(train_neighbours, config.score_mode, config.score_k)
    results = SearchResults(neighbours, labels, scores, loo_scores, train_neighbours)
    store.put(key, results)
    return results


# Half-widths past which the share's and the expected MAP@k's intervals are called uncertain: issue #23's targets
# for how far either may stray from the truth.
SURE_SHARE, SURE_MAP = 0.05, 0.03


@dataclass
class Analysis:
    """Test items against train: neighbours, scores, ranked labels and everything a threshold or placement changes."""

    train: Embeddings
    test: Embeddings
    config: PredictConfig
    neighbours: Neighbours  # test against train: each item's top max(k, score_k) train neighbours
    retrieval: Retrieval
    threshold: float  # the threshold chosen by the config
    threshold_source: str  # how it was chosen, for people
    # train items as left-out known items and left-out classes; None when train cannot give them
    evidence: TrainEvidence | None
    # P(distractor) and label-rank odds per score; None when it cannot be fitted
    placement_model: PlacementModel | None
    placement: str  # "first" or "optimal": the config's, or the one scoring higher on train; "first" without a model
    placement_source: str  # how it was chosen, for people
    validation: ValidationResult | None = None
    notes: list[str] = field(default_factory=list)
    # train_loo_scores and train_neighbours read from a search store; None: computed on first use
    stored_train_loo_scores: np.ndarray | None = None
    stored_train_neighbours: Neighbours | None = None
    # The placement model refitted on class bootstraps of train: the spread of every figure given without test truth.
    bootstrap: list[PlacementModel] = field(default_factory=list)
    # The model's own bias on pseudo-tests of the classes each bootstrap left out; None with fewer than two.
    calibration: Calibration | None = None
    # Test items whose share evidence is pooled with their nearest test items' (`pooling_of`); None: unpooled.
    pooling: Pooling | None = None

    @property
    def scores(self) -> np.ndarray:
        return self.retrieval.scores

    @property
    def sweep(self) -> ThresholdSweep:
        """The sweep of the placement in use."""
        return self.sweep_for(self.placement)

    def sweep_for(self, placement: str) -> ThresholdSweep:
        """MAP@k (with truth) at any threshold when "-1" is placed by `placement`; the flag counts are the same for both."""
        return self._sweeps[placement]

    @cached_property
    def _sweeps(self) -> dict[str, ThresholdSweep]:
        if self.truth is None:
            return dict.fromkeys(PLACEMENTS, self.retrieval.sweep)
        sweeps = {}
        for placement in PLACEMENTS:
            kept = positions_for(np.zeros(len(self.scores), bool), placement, self.kept_positions)
            if_flagged, if_kept = verdict_precisions(
                self.retrieval.labels, self.truth, self.config.k, kept
            )
            sweeps[placement] = ThresholdSweep(
                self.scores, if_flagged, if_kept, self.truth == DISTRACTOR
            )
        return sweeps

    @cached_property
    def truth(self) -> np.ndarray | None:
        return self.test.labels.astype(object) if self.test.has_test_truth else None

    @cached_property
    def expected_precisions(self) -> np.ndarray | None:
        """Test items × positions (1..k, then nowhere): expected AP@k of "-1" there, from the placement model (if any)."""
        return (
            None
            if self.placement_model is None
            else self.placement_model.expected_precisions(self.scores)
        )

    @cached_property
    def kept_positions(self) -> np.ndarray:
        """Where "optimal" puts "-1" for each item it does not flag: 2..k, or 0 for nowhere."""
        return self._kept_positions_of(self.expected_precisions, self.retrieval.labels)

    def _kept_positions_of(self, expected: np.ndarray | None, rows: list[list[str]]) -> np.ndarray:
        """Without a placement model, nowhere ("optimal" is then "first"); a row shorter than k (train has fewer
        classes) takes "-1" right after its last label at most."""
        if expected is None:
            return np.zeros(len(rows), np.int64)
        return np.minimum(kept_positions(expected), np.array([len(row) for row in rows]) + 1)

    def flags(self, threshold: float | None = None) -> np.ndarray:
        return self.scores < (self.threshold if threshold is None else threshold)

    def positions(
        self,
        threshold: float | None = None,
        flags: np.ndarray | None = None,
        placement: str | None = None,
    ) -> np.ndarray:
        """Where "-1" goes in each row (1..k; 0: nowhere) for a verdict and a placement (by default the analysis's own)."""
        flags = self.flags(threshold) if flags is None else flags
        return positions_for(flags, placement or self.placement, self.kept_positions)

    def predictions(
        self,
        threshold: float | None = None,
        flags: np.ndarray | None = None,
        placement: str | None = None,
    ) -> list[list[str]]:
        return place_minus_one(
            self.retrieval.labels, self.positions(threshold, flags, placement), self.config.k
        )

    def query_positions(
        self, rows: list[list[str]], scores: np.ndarray, threshold: float | None = None
    ) -> np.ndarray:
        """Where "-1" goes for queries searched apart from the test split (an uploaded image, a text), by the placement in use."""
        scores = np.asarray(scores, np.float64)
        expected = (
            None
            if self.placement_model is None
            else self.placement_model.expected_precisions(scores)
        )
        flags = scores < (self.threshold if threshold is None else threshold)
        return positions_for(flags, self.placement, self._kept_positions_of(expected, rows))

    def false_flag_share(self, threshold: float | None = None) -> float | None:
        """With test truth, the share of test items of known classes that the threshold flags."""
        if self.truth is None or not (known := self.truth != DISTRACTOR).any():
            return None
        return float(self.flags(threshold)[known].mean())

    def expected_map(
        self,
        threshold: float | None = None,
        flags: np.ndarray | None = None,
        placement: str | None = None,
    ) -> float | None:
        """MAP@k the placement model expects for a verdict and placement, without test truth (None without a model)."""
        if self.expected_precisions is None:
            return None
        positions = self.positions(threshold, flags, placement)
        columns = np.where(positions == 0, self.config.k, positions - 1)
        return float(np.mean(self.expected_precisions[np.arange(len(positions)), columns]))

    @cached_property
    def share_interval(self) -> tuple[float, float] | None:
        """Where the true distractor share should fall: the class bootstraps' shares, each spread by the model's bias on
        pseudo-tests (`Calibration`) and by the test set's sampling noise; None without a model."""
        return share_interval(
            self.bootstrap, self.calibration, self.placement_model, self.scores, self.pooling
        )

    def expected_map_interval(
        self,
        threshold: float | None = None,
        flags: np.ndarray | None = None,
        placement: str | None = None,
    ) -> tuple[float, float] | None:
        """Where the measured MAP@k of these rows should fall: what the class bootstraps' models expect of them, spread by
        the model's bias on pseudo-tests (`Calibration`) and the test set's sampling noise (`predictive_interval`);
        None without a model."""
        if not self.bootstrap:
            return None
        flags = self.flags(threshold) if flags is None else flags
        kept = self.positions(flags=np.zeros(len(flags), bool), placement=placement)
        # Items by score, flagged ones first: the flagged rows are then a prefix, as expected_map_by_flags counts
        # them, and a threshold's flags keep the sweep's order, as the slider's band (threshold_steps) does.
        order = self.sweep.order[np.argsort(~flags[self.sweep.order], kind="stable")]
        low, high = self.expected_map_band(kept, order, np.array([int(flags.sum())]))
        return float(low[0]), float(high[0])

    def expected_map_band(
        self, kept: np.ndarray, order: np.ndarray, flagged: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`expected_map_interval` for each count in `flagged` of the first items of `order` flagged, the others at `kept`."""
        curves = bootstrap_curves(
            self.placement_model,
            self.bootstrap,
            self.scores,
            kept,
            order,
            flagged,
            self.config.seed,
        )
        spread = self.placement_model.map_spread(self.scores, kept, order, flagged)
        if self.calibration is not None:
            bias = self.calibration.map_bias_at(np.asarray(flagged) / len(self.scores))
            spread = np.sqrt(spread**2 + bias**2)
        return predictive_interval(curves, spread)

    def uncertainty_note(self) -> str | None:
        """A note naming the share's or the threshold's expected-MAP@k interval when either is wider than issue #23's
        targets (±SURE_SHARE, ±SURE_MAP); None when both are narrower or there is no model. Short enough (under
        core.display.DISPLAY_LIMIT) for a page to show it whole."""
        if self.placement_model is None or not self.bootstrap:
            return None
        wide = []
        low, high = self.share_interval
        if high - low > 2 * SURE_SHARE:
            wide.append(f"distractor share {low:.1%}–{high:.1%}")
        low, high = self.expected_map_interval()
        if high - low > 2 * SURE_MAP:
            wide.append(f"expected MAP@{self.config.k} {low:.3f}–{high:.3f}")
        if not wide:
            return None
        images = int(np.median(list(Counter(self.train.labels.tolist()).values())))
        return (
            f"uncertain figures without the answers: {', '.join(wide)} "
            f"({1 - INTERVAL_LEFT_OUT:.0%} intervals; train: {images} images a class)"
        )

    def without_truth(
        self, threshold: float | None = None, flags: np.ndarray | None = None
    ) -> str | None:
        """The estimated distractor share and the expected MAP@k of a verdict, each with its interval, in words; None
        without a placement model."""
        if self.placement_model is None:
            return None
        level = f"{1 - INTERVAL_LEFT_OUT:.0%} interval"
        share_low, share_high = self.share_interval
        map_low, map_high = self.expected_map_interval(threshold, flags)
        return (
            f"estimated distractor share {self.placement_model.contamination:.1%} ({level} {share_low:.1%}–{share_high:.1%}); "
            f"expected MAP@{self.config.k} {self.expected_map(threshold, flags):.3f} ({level} {map_low:.3f}–{map_high:.3f})"
        )

    @cached_property
    def train_neighbours(self) -> Neighbours:
        """Each train item's top max(k, score_k) neighbours among the other train items."""
        if self.stored_train_neighbours is not None:
            return self.stored_train_neighbours
        return leave_one_out_neighbours(self.train.vectors, search_width(self.config))

    @cached_property
    def train_loo_scores(self) -> np.ndarray:
        if self.stored_train_loo_scores is not None:
            return self.stored_train_loo_scores
        return leave_one_out_scores_of(
            self.train_neighbours, self.config.score_mode, self.config.score_k
        )

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

    def report(
        self, threshold: float | None = None, flags: np.ndarray | None = None
    ) -> AnalysisReport:
        """Counts, the placement and its expected MAP@k; with test truth, MAP@k of both placements, mP@k, top-1 and detection."""
        threshold = self.threshold if threshold is None else threshold
        flags = self.flags(threshold) if flags is None else flags
        measured = None
        if self.truth is not None:
            k = self.config.k
            rows = {
                placement: self.predictions(flags=flags, placement=placement)
                for placement in PLACEMENTS
            }
            map_by_placement = {
                placement: float(
                    np.mean([average_precision_at_k(t, r, k) for t, r in zip(self.truth, placed)])
                )
                for placement, placed in rows.items()
            }
            measured = Measured(
                map_at_k=map_by_placement[self.placement],
                map_by_placement=map_by_placement,
                expected_map_by_placement={
                    placement: self.expected_map(flags=flags, placement=placement)
                    for placement in PLACEMENTS
                },
                mean_precision=self.mean_precision,
                top1_accuracy=top1_accuracy(self.truth, rows[self.placement]),
                detection=distractor_report(self.truth == DISTRACTOR, flags, self.scores),
            )
        return AnalysisReport(
            k=self.config.k,
            threshold=float(threshold),
            test_items=len(flags),
            flagged=int(flags.sum()),
            placement=self.placement,
            placement_source=self.placement_source,
            estimated_distractor_share=None
            if self.placement_model is None
            else self.placement_model.contamination,
            estimated_distractor_share_interval=self.share_interval,
            expected_map=self.expected_map(flags=flags),
            expected_map_interval=self.expected_map_interval(flags=flags),
            measured=measured,
        )


def _why_auto_cannot_choose(train: Embeddings, unfitted: str | None) -> str | None:
    """Why train cannot back a threshold chosen by validation (no placement model, too few classes to hold
    out), or None when it can."""
    if unfitted is not None:
        return f"the placement model cannot be fitted: {unfitted}"
    try:
        check_classes_to_hold_out(
            train.labels.astype(object),
            "choosing the threshold by validation",
            "so the contamination decides",
        )
    except ValueError as error:
        return str(error)
    return None


def fitted_placement(
    train: Embeddings,
    config: PredictConfig,
    test_scores: np.ndarray,
    pooling: Pooling | None = None,
) -> tuple[TrainEvidence | None, PlacementModel | None, str | None]:
    """Train evidence and the placement model fitted on it and the test scores; what cannot be had is None, with why.

    Tiny train sets (one class, one image per class) give no evidence, and a model cannot be fitted
    on evidence that is not finite: the analysis then places "-1" first rather than refusing.
    """
    try:
        evidence = evidence_for(train, config)
    except ValueError as error:
        return None, None, str(error)
    try:
        return evidence, fit_placement(evidence, test_scores, pooling=pooling), None
    except ValueError as error:
        return evidence, None, str(error)


def analyse(
    embeddings: Embeddings,
    config: PredictConfig = PredictConfig(),
    store: SearchStore | None = None,
    watch: Watch = Watch(),
) -> Analysis:
    """Search test against train, score distractors, choose the threshold and the placement the config asks for.

    With a `store`, the searches (train leave-one-out scores included) are read from it when it has
    them and kept in it when not. `watch` hears how the searches go and can stop them (Cancelled).
    """
    train, test = embeddings.subset(TRAIN), embeddings.subset(TEST)
    if len(train.ids) == 0:
        raise ValueError("the train split is empty: label some images under train/<label>/")
    if len(test.ids) == 0:
        raise ValueError("the test split is empty: put the images to label under test/")
    check_train_labels(train.labels)
    notes = []
    n_classes = len(set(train.labels.tolist()))
    if n_classes < config.k:
        notes.append(
            f"train has {n_classes} classes, fewer than k={config.k}: prediction rows are shorter"
        )
    truth = test.labels.astype(object) if test.has_test_truth else None
    stored_loo_scores = stored_train_neighbours = None
    if store is None:
        neighbours, retrieval = retrieve(
            train.vectors, train.labels.astype(object), test.vectors, config, truth, watch
        )
    else:
        results = searched(train, test, config, store, watch)
        neighbours, stored_loo_scores = results.neighbours, results.train_loo_scores
        stored_train_neighbours = results.train_neighbours
        retrieval = ranked_retrieval(results.labels, results.scores, config.k, truth)
    watch.step(0, 1, PLACEMENT_STAGE)
    # Distractors come as whole classes: each test item's share evidence is pooled with its nearest test items'.
    pooling = pooling_of(test.vectors, n_classes, config.seed)
    evidence, model, unfitted = fitted_placement(train, config, retrieval.scores, pooling)
    bootstrap, calibration = (
        ([], None)
        if model is None
        else class_bootstrap(
            evidence, retrieval.scores, None, config.validation_rounds, config.seed, pooling
        )
    )
    validation = None
    auto_refusal = (
        _why_auto_cannot_choose(train, unfitted if model is None else None) if config.auto else None
    )
    if config.threshold is not None:
        threshold, source = config.threshold, "fixed threshold"
    elif config.max_false_flag is not None:
        if evidence is None:
            raise ValueError(
                f"a guaranteed false-flag rate needs train leave-one-out scores, which this train set cannot give ({unfitted}) — use a contamination rate or a fixed threshold"
            )
        threshold = conformal_threshold(evidence, config.max_false_flag)
        source = (
            f"at most {config.max_false_flag:.1%} of known-class items flagged (split conformal on "
            f"{len(evidence.known_scores)} train leave-one-out scores)"
        )
    elif config.auto and auto_refusal is None:
        validation = validate_threshold(
            train, config, retrieval.scores, evidence, bootstrap, pooling
        )
        shares = retrieval.sweep.contamination(np.array(validation.round_thresholds))
        threshold = validation.threshold
        source = (
            f"validation on train: the highest expected MAP@{config.k} averaged over {len(validation.round_thresholds)} class bootstraps of "
            f"the placement model (each bootstrap's own best flags {shares.min():.1%}–{shares.max():.1%}); estimated "
            f"distractor share {validation.contamination:.1%}, validation MAP@{config.k} {validation.map_at_k:.3f}"
        )
        if validation.fell_back:
            source = (
                f"contamination {config.contamination:.0%}, as the evidence does not back a choice: "
                + source
            )
            notes.append(
                f"--auto is not confident: {validation.fell_back_because}, so it flags "
                f"{config.contamination:.0%} (the contamination) instead"
            )
    else:
        threshold = retrieval.sweep.threshold_for(config.contamination)
        source = f"contamination {config.contamination:.0%}"
        if auto_refusal is not None:
            source += f", as --auto cannot choose here: {auto_refusal}"
            notes.append(
                f"--auto cannot choose a threshold here ({auto_refusal}): it flags the contamination, "
                f"{config.contamination:.0%}, instead"
            )
        flagged = int(retrieval.sweep.flagged_count(threshold))
        if flagged != round(config.contamination * retrieval.sweep.n):
            notes.append(
                f"test scores tie at the threshold {threshold:.3f}: it flags {flagged} of {retrieval.sweep.n} "
                f"test items, not the {config.contamination:.0%} asked for"
            )
    if model is None:
        placement, placement_source = "first", f"the placement model cannot be fitted: {unfitted}"
        notes.append(f'"-1" goes first for flagged items only, never further back: {unfitted}')
    elif config.placement is not None:
        placement, placement_source = config.placement, "asked for"
    else:
        validated = {
            name: train_evidence_map(evidence, model, threshold, name) for name in PLACEMENTS
        }
        placement = "optimal" if validated["optimal"] >= validated["first"] else "first"
        placement_source = f"higher validation MAP@{config.k} on train: optimal {validated['optimal']:.3f}, first {validated['first']:.3f}"
    analysis = Analysis(
        train,
        test,
        config,
        neighbours,
        retrieval,
        float(threshold),
        source,
        evidence,
        model,
        placement,
        placement_source,
        validation,
        notes,
        stored_loo_scores,
        stored_train_neighbours,
        bootstrap,
        calibration,
        pooling,
    )
    if note := analysis.uncertainty_note():
        notes.append(note)
    return analysis
