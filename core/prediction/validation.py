"""Choosing a threshold without test truth: train labels checked, classes held out as pseudo-distractors,
class bootstraps for the automatic threshold, and the split-conformal bound on false flags."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.detection.distractors import ThresholdSweep
from core.prediction.placement import (
    MAX_EVIDENCE_QUERIES,
    PlacementModel,
    Pooling,
    TrainEvidence,
    expected_map_by_flags,
    fit_placement,
    kept_positions,
    positions_for,
    realised_precisions,
    realised_table,
    train_evidence,
)
from core.records import DISTRACTOR, Embeddings

if TYPE_CHECKING:
    from core.prediction.config import PredictConfig


@dataclass(frozen=True)
class ValidationResult:
    """The automatic threshold, chosen on the placement model refitted on class bootstraps of train, and how sure it is."""

    threshold: float  # where the expected MAP@k averaged over the bootstrap models peaks, or the fallback's
    map_at_k: float  # validation MAP@k on train at that threshold, with "-1" placed optimally
    round_thresholds: list[float]  # where each bootstrap model's own expected MAP@k peaks
    held_out_classes: int  # classes held out as distractors, one at a time
    contamination: float  # distractor share the threshold is chosen for: estimated, or given
    # The expected MAP@k gained over flagging config.contamination, across the bootstrap models (interval).
    gain_over_fallback: tuple[float, float]
    # Why the threshold flags config.contamination instead, for people to read; None when it does not.
    fell_back_because: str | None

    @property
    def fell_back(self) -> bool:
        return self.fell_back_because is not None


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


def _classes_held_out(
    distractor_items: np.ndarray, known_items: np.ndarray, share: float, keep: int
) -> int:
    """How many of a row of classes, taken in order, to hold out as distractors: until their items make up `share`
    of the queries (a held-out class gives `distractor_items`, a kept one `known_items`), keeping `keep` classes."""
    held, distractors, known = 0, 0, int(np.sum(known_items))
    while held < len(distractor_items) - keep and distractors < share * (distractors + known):
        distractors += int(distractor_items[held])
        known -= int(known_items[held])
        held += 1
    return held


def pseudo_distractor_split(labels: np.ndarray, contamination: float, rng: np.random.Generator):
    """Gallery / query rows of train: held-out classes become "-1" queries, one image of each other class a query."""
    classes = list(dict.fromkeys(labels.tolist()))
    rng.shuffle(classes)
    counts = Counter(labels.tolist())
    sizes = np.array([counts[c] for c in classes])
    held = set(classes[: _classes_held_out(sizes, sizes >= 2, contamination, keep=2)])
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


def evidence_for(train: Embeddings, config: PredictConfig) -> TrainEvidence:
    """Train items scored as known items (left out one at a time) and as distractors (their class left out)."""
    return train_evidence(
        train.vectors,
        train.labels.astype(object),
        config.k,
        config.score_mode,
        config.score_k,
        config.seed,
    )


def train_evidence_map(
    evidence: TrainEvidence, model: PlacementModel, threshold: float, placement: str
) -> float:
    """MAP@k on train evidence at the model's distractor share: left-out items as known, left-out classes as distractors."""
    values = []
    for scores, ranks, is_distractor in (
        (evidence.known_scores, evidence.known_ranks, False),
        (evidence.distractor_scores, np.zeros(len(evidence.distractor_scores), np.int64), True),
    ):
        positions = positions_for(
            scores < threshold, placement, kept_positions(model.expected_precisions(scores))
        )
        values.append(
            realised_precisions(
                ranks, np.full(len(scores), is_distractor), positions, evidence.k
            ).mean()
        )
    return float((1 - model.contamination) * values[0] + model.contamination * values[1])


# The share of class bootstraps an interval leaves out, half on each side.
INTERVAL_LEFT_OUT = 0.1


# Flagged shares of a test set at which the pseudo-tests measure the expected MAP@k's error (interpolated between).
CALIBRATION_SHARES = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class Calibration:
    """How far off the placement model's figures run in this dataset, one way: its bias on pseudo-tests, which the
    spread of the class bootstraps (what the train classes cannot pin down) does not hold.

    Each class bootstrap leaves about a third of the train classes out; those classes make a pseudo-test (some as
    distractors, scored without their class, the others as known items, scored without themselves) that the
    bootstrap's model, fitted without them, is asked about. The bias is the mean of its errors over the pseudo-tests,
    its square less the square of that mean's standard error (the pseudo-tests' own noise), so that a mean no larger
    than its noise counts as none. Known items of a pseudo-test see one image of their class fewer than a real
    test's do, so there the model is fitted as if the test saw as many as train's left-out items (no correction for
    the extra image): that correction's own error is not measured. For the same reason the bias only widens the
    intervals and never moves a figure: on digits the pseudo-tests' mean error in the expected MAP@k had the other
    sign from the real one (moving the figure by it doubled the error, 0.027 to 0.046)."""

    share_bias: float  # of the estimated share
    map_bias: np.ndarray  # of the expected MAP@k, at each of CALIBRATION_SHARES flagged
    rounds: int  # pseudo-tests measured

    def map_bias_at(self, flagged_share) -> np.ndarray:
        return np.interp(flagged_share, CALIBRATION_SHARES, self.map_bias)


def _pseudo_test(
    evidence: TrainEvidence, classes: np.ndarray, share: float, rng: np.random.Generator
):
    """Scores, label ranks and truth of a test set made of `classes` of the evidence: shuffled, the first ones' items
    as distractors until they make up about `share` of it, the rest's as known items; None without both."""
    classes = rng.permutation(classes)
    far_rows = [np.flatnonzero(evidence.distractor_classes == code) for code in classes]
    known_rows = [np.flatnonzero(evidence.known_classes == code) for code in classes]
    held = _classes_held_out(
        np.array([len(rows) for rows in far_rows]),
        np.array([len(rows) for rows in known_rows]),
        share,
        keep=1,
    )
    if held == 0 or not any(len(rows) for rows in known_rows[held:]):
        return None
    far, known = np.concatenate(far_rows[:held]), np.concatenate(known_rows[held:])
    return (
        np.r_[evidence.known_scores[known], evidence.distractor_scores[far]],
        np.r_[evidence.known_ranks[known], np.zeros(len(far), np.int64)],
        np.r_[np.zeros(len(known), bool), np.ones(len(far), bool)],
    )


def _pseudo_test_errors(
    model: PlacementModel, drawn: TrainEvidence, test
) -> tuple[float, np.ndarray]:
    """The estimated share's error, and the expected MAP@k's at each of CALIBRATION_SHARES flagged, when `model`
    (fitted on `drawn`) is asked about the pseudo-test `test` (`_pseudo_test`)."""
    scores, ranks, is_distractor = test
    # The pseudo-test's known items see as many images of their class as the evidence's: no correction for one more.
    model = model.with_detector(drawn.known_scores, drawn.distractor_scores).with_share_of(scores)
    expected = model.expected_precisions(scores)
    realised = realised_table(ranks, is_distractor, model.k)
    kept = kept_positions(expected)
    order = np.argsort(scores, kind="stable")
    flagged = np.round(CALIBRATION_SHARES * len(scores)).astype(np.int64)
    expected_map = expected_map_by_flags(expected, kept, order, flagged)
    realised_map = expected_map_by_flags(realised, kept, order, flagged)
    return model.contamination - float(is_distractor.mean()), expected_map - realised_map


def _bias(errors: np.ndarray) -> np.ndarray:
    """Over rounds (axis 0): how far the errors' mean is from 0 beyond its standard error, as a root of squares."""
    mean, variance = errors.mean(axis=0), errors.var(axis=0, ddof=1) / len(errors)
    return np.sqrt(np.maximum(mean**2 - variance, 0.0))


def _calibration(measured: list[tuple[float, np.ndarray]]) -> Calibration | None:
    """The pseudo-tests' errors as a `Calibration`; None with fewer than two, whose spread cannot be told."""
    if len(measured) < 2:
        return None
    share_errors, map_errors = (np.array(values, np.float64) for values in zip(*measured))
    return Calibration(float(_bias(share_errors)), _bias(map_errors), len(measured))


def class_bootstrap(
    evidence: TrainEvidence,
    test_scores: np.ndarray | None,
    contamination: float | None,
    rounds: int,
    seed: int,
    pooling: Pooling | None = None,
) -> tuple[list[PlacementModel], Calibration | None]:
    """The placement model refitted on `rounds` draws of train classes with replacement (draws without a known item
    skipped), and, when the share is fitted, its `Calibration` on the classes each draw left out.

    Each model's distractor share is `contamination` if given, else its own fit to the test scores,
    read at MAX_EVIDENCE_QUERIES evenly spaced quantiles when there are more: those follow the
    distribution of all the scores far closer than as many drawn at random, whose sampling error
    (about 0.006 at 4,000) would move every model's share alike and so leave the interval beside
    the estimate. The spread of the models is what the train classes cannot pin down. With `pooling`
    (`fit_placement`) every test score is kept: the pooled items' neighbours are any of them."""
    rng, split = np.random.default_rng(seed), np.random.default_rng([seed, 5])
    if pooling is None and test_scores is not None and len(test_scores) > MAX_EVIDENCE_QUERIES:
        test_scores = np.quantile(
            test_scores, (np.arange(MAX_EVIDENCE_QUERIES) + 0.5) / MAX_EVIDENCE_QUERIES
        )
    classes = np.unique(evidence.distractor_classes)
    models, measured = [], []
    for _ in range(rounds):
        chosen = rng.choice(classes, len(classes))
        drawn = evidence.of_classes(chosen)
        if not drawn.has_known_items:
            continue
        models.append(fit_placement(drawn, test_scores, contamination, pooling))
        if contamination is None:
            test = _pseudo_test(
                evidence, np.setdiff1d(classes, chosen), models[-1].contamination, split
            )
            if test is not None:
                measured.append(_pseudo_test_errors(models[-1], drawn, test))
    return models, _calibration(measured)


def bootstrap_curves(
    model: PlacementModel,
    models: list[PlacementModel],
    scores: np.ndarray,
    kept: np.ndarray,
    order: np.ndarray,
    flagged,
    seed: int,
) -> np.ndarray:
    """Models × `flagged`: each bootstrap model's expected MAP@k when the `flagged` first items of `order` get "-1"
    first and the others their `kept` position (`expected_map_by_flags`).

    `model`'s curve over all items, moved by how far each bootstrap model's curve lies from it on at
    most MAX_EVIDENCE_QUERIES items drawn along `order`: the models differ smoothly in the score, so
    a few thousand items measure their differences as well as all, at a small share of the cost."""
    n = len(scores)
    rng = np.random.default_rng([seed, 3])
    drawn = (
        np.arange(n)
        if n <= MAX_EVIDENCE_QUERIES
        else np.sort(rng.choice(n, MAX_EVIDENCE_QUERIES, replace=False))
    )
    items, within = order[drawn], np.searchsorted(drawn, flagged)
    line = np.arange(len(items))

    def drawn_curve(of: PlacementModel) -> np.ndarray:
        return expected_map_by_flags(
            of.expected_precisions(scores[items]), kept[items], line, within
        )

    full = expected_map_by_flags(model.expected_precisions(scores), kept, order, flagged)
    reference = drawn_curve(model)
    return np.array([full + drawn_curve(other) - reference for other in models])


# Normal quantiles each bootstrap model's figure is spread over in a predictive interval.
_SPREAD_POINTS = 41


def interval(values) -> tuple[float, float]:
    """The middle of `values` (class bootstraps), leaving INTERVAL_LEFT_OUT out."""
    low, high = np.quantile(
        np.asarray(values, np.float64), [INTERVAL_LEFT_OUT / 2, 1 - INTERVAL_LEFT_OUT / 2]
    )
    return float(low), float(high)


def predictive_interval(means: np.ndarray, spread) -> tuple[np.ndarray, np.ndarray]:
    """Where a measured figure falls, leaving INTERVAL_LEFT_OUT out: each bootstrap model expects `means` (models ×
    figures) and a finite test set strays from that by `spread` (a standard deviation per figure).

    The quantiles of the mixture of the models' normal spreads: the train classes' uncertainty and
    the test set's sampling noise together."""
    from scipy.stats import norm

    means = np.atleast_2d(np.asarray(means, np.float64))
    z = norm.ppf((np.arange(_SPREAD_POINTS) + 0.5) / _SPREAD_POINTS)
    pooled = means[:, None, :] + z[None, :, None] * np.asarray(spread, np.float64)[None, None]
    low, high = np.quantile(
        pooled.reshape(-1, means.shape[1]),
        [INTERVAL_LEFT_OUT / 2, 1 - INTERVAL_LEFT_OUT / 2],
        axis=0,
    )
    return low, high


def share_interval(
    bootstrap: list[PlacementModel],
    calibration: Calibration | None,
    model: PlacementModel,
    test_scores: np.ndarray,
    pooling: Pooling | None = None,
) -> tuple[float, float] | None:
    """Where the true distractor share should fall: the class bootstraps' shares, each spread by the model's bias on
    pseudo-tests (`Calibration`) and by the test set's sampling noise; None without bootstraps."""
    if not bootstrap:
        return None
    shares = [fitted.contamination for fitted in bootstrap]
    if calibration is None:
        return interval(shares)
    spread = np.sqrt(calibration.share_bias**2 + model.share_variance(test_scores, pooling))
    low, high = predictive_interval(np.array(shares)[:, None], spread)
    return float(max(low[0], 0.0)), float(min(high[0], 1.0))


def validate_threshold(
    train: Embeddings,
    config: PredictConfig,
    test_scores: np.ndarray | None = None,
    evidence: TrainEvidence | None = None,
    models: list[PlacementModel] | None = None,
    pooling: Pooling | None = None,
) -> ValidationResult:
    """The threshold with the highest expected MAP@k averaged over class bootstraps of the placement model; no
    contamination needed.

    The distractor share is fitted to the test scores when they are given (config.contamination
    otherwise). Averaging the bootstrap models' expected MAP@k weighs what train cannot pin down.
    When the interval of what that threshold gains over flagging config.contamination leans to a
    loss (its middle is below zero), the evidence does not back the choice and the threshold flags
    config.contamination instead. (Falling back also whenever the share's interval holds
    config.contamination was measured on bench section 9's grid and lost: 0.869 against 0.872 mean
    MAP@5, most where the true share is 50%.)
    """
    labels = train.labels.astype(object)
    check_classes_to_hold_out(
        labels,
        "choosing the threshold by validation",
        "use a contamination rate or a fixed threshold",
    )
    evidence = evidence or evidence_for(train, config)
    share = None if test_scores is not None else config.contamination
    placed = np.sort(
        test_scores
        if test_scores is not None
        else np.concatenate([evidence.known_scores, evidence.distractor_scores])
    )
    pooling = pooling if test_scores is not None else None
    model = fit_placement(evidence, test_scores, share, pooling)
    if models is None:
        models, _ = class_bootstrap(
            evidence, test_scores, share, config.validation_rounds, config.seed, pooling
        )
    models = models or [model]
    kept = kept_positions(model.expected_precisions(placed))
    order, cuts = np.arange(len(placed)), np.arange(len(placed) + 1)
    curves = bootstrap_curves(model, models, placed, kept, order, cuts, config.seed)
    best = int(np.argmax(curves.mean(axis=0)))
    fallback = round(config.contamination * len(placed))
    gain = interval(curves[:, best] - curves[:, fallback])
    fell_back_because = None
    if sum(gain) < 0:
        fell_back_because = (
            f"across class bootstraps its best threshold gains {gain[0]:+.3f} to {gain[1]:+.3f} expected "
            f"MAP@{config.k} over flagging {config.contamination:.0%}, leaning to a loss"
        )
    fell_back = fell_back_because is not None
    sweep = ThresholdSweep(placed)
    threshold = sweep.threshold_for((fallback if fell_back else best) / len(placed))
    map_at_k = train_evidence_map(evidence, model, threshold, "optimal")
    return ValidationResult(
        threshold,
        map_at_k,
        [sweep.threshold_for(int(np.argmax(curve)) / len(placed)) for curve in curves],
        len(np.unique(evidence.distractor_classes)),
        model.contamination,
        gain,
        fell_back_because,
    )


def conformal_threshold(evidence: TrainEvidence, max_false_flag: float) -> float:
    """The threshold that flags at most `max_false_flag` of known-class test items (split conformal).

    Assumes a known test item's score is exchangeable with the train leave-one-out scores; it sees
    one more image of its class than they do, so it scores as high or higher and the bound holds
    with room to spare. With m scores, the j-th lowest (j = ⌊α(m + 1)⌋) flags a known item with
    probability at most j / (m + 1) ≤ α; j = 0 flags nothing.
    """
    scores = np.sort(evidence.known_scores)
    rank = int(np.floor(max_false_flag * (len(scores) + 1)))
    return float(scores[rank - 1]) if rank >= 1 else -1.0  # no cosine similarity is below -1
