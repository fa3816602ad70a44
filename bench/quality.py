"""Retrieval quality without the answers: --auto against being told the distractor share and a blind 30% guess, and how
far the estimated share and expected MAP@5 (with their intervals) are from the truth, over a grid of regimes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.fixtures import retrieval_embeddings
from bench.report import Section, table
from core.analysis.pipeline import analyse
from core.prediction.config import PredictConfig
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

# Twelve class splits a digits regime: with four, which digits were distractors moved a regime's mean share error
# by 0.02 or more, more than the differences the grid is read for.
FULL = {"digit_seeds": 12, "synthetic_test": 13_000}
QUICK = {"digit_seeds": 2, "synthetic_test": 4_000}
DIGITS_TARGET = 0.85  # issue #13: mean MAP@5 of --auto on digits (0-6 known, 3 train images each)
TRAIN_PER_CLASS = (2, 3, 5, 10)
SHARES = (0.1, 0.3, 0.5)
BLIND_SHARE = 0.3  # the share one write-up simulated for lack of any other figure
# Issue #23's targets, as means over the regimes.
AUTO_SLACK, SHARE_ERROR, EXPECTED_ERROR, COVERAGE = 0.01, 0.05, 0.03, 0.8
DIGIT_DISTRACTOR_CLASSES = 3

# Share estimators measured by hand against the one kept (not rerun by this command).
SHARE_ESTIMATORS_TRIED = (
    "**Share estimators measured and not kept** (once, on this grid's 12 digits regimes × 12 class splits and its "
    "3 synthetic sets; mean |estimated − true share| over the 15 regimes, and over the 2–3-images regimes): the "
    "one kept, the EM below with each test item's evidence pooled with its N/(2C) − 1 nearest test items' "
    "(distractors come as whole classes; `pooling_size`), 0.047 (0.077), expected-MAP@5 error 0.026; before it, "
    "Saerens EM per item on train evidence whose known scores are raised to one more image of their class as if "
    "independent (power n/(n − 1)), 0.061 (0.113). Pooled over N/C 0.063, N/(3C)–N/(8C) 0.041–0.046; pooled "
    "with known scores raised on their own class only and distractor evidence widened by test items' best "
    "similarity outside their nearest class 0.043, expected-MAP@5 error 0.031 (measured once by hand, with all test items pooled; the harness is kept on branch share-est). "
    "The same per-item EM without that correction 0.065 (0.109), with half "
    "of it (power √(n/(n − 1)), between no gain from the extra image and an independent one) 0.054 (0.094; its "
    "mean signed error stays within ±0.025 in every regime, where the kept one is +0.06 to +0.10 at 2–3 images, "
    "but in the pipeline its expected-MAP@5 error is 0.031 against the kept one's 0.027 and --auto gains "
    "nothing); either with the distractor evidence raised to one more train class (power C/(C − 1)), no gain "
    "(0.055–0.066). EM in a matched world (one image of each class withheld from the gallery) 0.071. KM2 "
    "(Ramaswamy et al. 2016, kernel mean embeddings, cvxopt's QP on at most 600 + 600 scores) with the "
    "distractor evidence as the component 0.088, with the known evidence 0.31 (4 class splits). DEDPUL (Ivanov "
    "2020) on the scores with kernel density ratios: its bound with the distractor evidence as the reference "
    "0.087, its EM 0.107, with the known evidence 0.17–0.25. Averages of estimators whose errors are not "
    "correlated (KM2's errors correlate 0.11 with the kept one's): kept + KM2 0.056; kept + uncorrected + KM2 "
    "0.048 (0.080), the only figure under 0.05, not kept: a three-way mix chosen after seeing these figures, a "
    "QP solver (cvxopt: about 65 MB installed, most of it its bundled BLAS and LAPACK) or a binned solver at "
    "0.06–0.4 s an estimate, too slow for the 20 class bootstraps, so the share's interval could not follow "
    "it. At 2–3 train images a class the error is set by which classes are distractors (with the true known "
    "scores given, EM still errs by up to 0.19), not by the estimator."
)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as centred unit pixel vectors, and their digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    vectors = digits.data - digits.data.mean(axis=0)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), digits.target


def _embeddings(
    vectors: np.ndarray, target: np.ndarray, known, train: np.ndarray, test: np.ndarray
) -> Embeddings:
    labels = np.array([str(t) if t in known else DISTRACTOR for t in target], dtype=object)
    rows = np.concatenate([train, test])
    return Embeddings(
        ids=np.array([f"digit-{row}" for row in rows]),
        splits=np.array([TRAIN] * len(train) + [TEST] * len(test)),
        labels=labels[rows],
        vectors=vectors[rows].astype(np.float32),
        model="centred pixels",
    )


def _train_rows(target: np.ndarray, known, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.choice(np.flatnonzero(target == digit), per_class, replace=False) for digit in known]
    )


def digits_embeddings(seed: int) -> Embeddings:
    """scikit-learn's digits as centred, unit pixel vectors: 0–6 known with 3 train images each, 7–9 as distractors."""
    from core.io.demo import DIGIT_TRAIN_CLASSES

    vectors, target = _digits()
    train = _train_rows(target, DIGIT_TRAIN_CLASSES, 3, np.random.default_rng(seed))
    test = np.setdiff1d(np.arange(len(target)), train)
    return _embeddings(vectors, target, DIGIT_TRAIN_CLASSES, train, test)


def digits_regime(seed: int, per_class: int, share: float) -> Embeddings:
    """Digits with 3 distractor digits drawn by `seed`, `per_class` train images of each other digit, and a test set of
    the remaining images of known digits and distractor images in the proportion `share`."""
    vectors, target = _digits()
    rng = np.random.default_rng(seed)
    distractors = rng.choice(10, DIGIT_DISTRACTOR_CLASSES, replace=False)
    known = [int(digit) for digit in np.setdiff1d(np.arange(10), distractors)]
    train = _train_rows(target, known, per_class, rng)
    known_rest = np.setdiff1d(np.flatnonzero(np.isin(target, known)), train)
    far_rest = np.flatnonzero(np.isin(target, distractors))
    n_known = min(len(known_rest), int(len(far_rest) * (1 - share) / share))
    n_far = round(n_known * share / (1 - share))
    test = np.concatenate(
        [rng.choice(known_rest, n_known, replace=False), rng.choice(far_rest, n_far, replace=False)]
    )
    return _embeddings(vectors, target, known, train, test)


@dataclass(frozen=True)
class Run:
    """One sample of a regime: MAP@5 of each rule and how the figures shown without truth fared."""

    auto: float
    told: float
    blind: float
    share_error: float  # |estimated - true distractor share|
    expected_error: float  # |expected - measured MAP@5| at auto's threshold
    share_covered: bool  # the share's interval holds the true share
    expected_covered: bool  # the expected MAP@5's interval holds the measured MAP@5
    share_width: float  # of the share's interval
    expected_width: float  # of the expected MAP@5's interval
    fell_back: bool  # --auto flagged the contamination, the evidence not backing its choice


def measured(embeddings: Embeddings) -> Run:
    truth = embeddings.subset(TEST).labels
    share = float(np.mean(truth == DISTRACTOR))
    auto = analyse(embeddings, PredictConfig(auto=True))
    report = auto.report()
    low, high = report.estimated_distractor_share_interval
    expected_low, expected_high = report.expected_map_interval
    return Run(
        report.measured_map,
        analyse(embeddings, PredictConfig(contamination=share)).report().measured_map,
        analyse(embeddings, PredictConfig(contamination=BLIND_SHARE)).report().measured_map,
        abs(report.estimated_distractor_share - share),
        abs(report.expected_map - report.measured_map),
        low <= share <= high,
        expected_low <= report.measured_map <= expected_high,
        high - low,
        expected_high - expected_low,
        auto.validation.fell_back,
    )


def _row(name: str, runs: list[Run]) -> list[str]:
    def mean(field: str) -> float:
        return float(np.mean([getattr(run, field) for run in runs]))

    covered = sum(run.expected_covered for run in runs)
    return [
        name,
        f"{mean('auto'):.3f}",
        f"{mean('told'):.3f}",
        f"{mean('blind'):.3f}",
        f"{mean('share_error'):.3f}",
        f"{mean('expected_error'):.3f}",
        f"{covered}/{len(runs)}",
        f"{mean('expected_width'):.3f}",
        f"{sum(run.share_covered for run in runs)}/{len(runs)}",
        f"{mean('share_width'):.3f}",
        f"{sum(run.fell_back for run in runs)}/{len(runs)}",
    ]


def run(work: Path, quick: bool) -> Section:
    plan = QUICK if quick else FULL
    section = Section(
        "9. Quality without the answers: --auto, the distractor share and expected MAP@5",
        "9. Quality",
    )
    regimes: dict[str, list[Run]] = {}
    for per_class in TRAIN_PER_CLASS:
        for share in SHARES:
            regimes[f"digits, {per_class} a class, {share:.0%}"] = [
                measured(digits_regime(seed, per_class, share))
                for seed in range(plan["digit_seeds"])
            ]
    for share in SHARES:
        regimes[f"synthetic {plan['synthetic_test']:,}, 3 a class, {share:.0%}"] = [
            measured(retrieval_embeddings(plan["synthetic_test"], distractor_share=share))
        ]
    runs = [run for regime in regimes.values() for run in regime]
    floor = [
        analyse(digits_embeddings(seed), PredictConfig(auto=True)).report().measured_map
        for seed in range(5)
    ]
    rows = [_row(name, regime) for name, regime in regimes.items()]
    by_regime = {
        field: np.array(
            [np.mean([getattr(r, field) for r in regime]) for regime in regimes.values()]
        )
        for field in (
            "auto",
            "told",
            "blind",
            "share_error",
            "expected_error",
            "expected_covered",
            "share_covered",
        )
    }
    rows.append(["**mean over samples**", *_row("", runs)[1:]])
    section.add(
        "Each row is a regime, its figures the mean over its samples. Digits: scikit-learn's handwritten digits as "
        "centred unit pixel vectors; each sample draws 3 of the 10 digits as distractors (so the class split "
        "varies with the seed), the train images of the other 7, and a test set of their remaining images with "
        "distractor images making up the share. Synthetic: bench/fixtures' CLIP-like vectors, 1,000 classes. "
        "*auto*: `--auto`, no truth and no share given; *told*: `--contamination` set to the true share; "
        "*blind 30%*: `--contamination 0.3`. *share error*: |estimated − true distractor share|; *expected error*: "
        "|expected − measured MAP@5| at auto's threshold; *covered*: samples whose expected-MAP@5 interval (90%: "
        "class bootstraps of train, the model's bias on pseudo-tests of the classes each bootstrap left out, and the "
        "test set's sampling noise) holds the measured MAP@5, and its mean *width*; *share covered*: likewise for the "
        "share's interval; *fell back*: samples where `--auto` found its choice not backed by the evidence and "
        "flagged 30%.",
        table(
            [
                "regime",
                "auto",
                "told",
                "blind 30%",
                "share error",
                "expected error",
                "covered",
                "interval width",
                "share covered",
                "share interval width",
                "fell back",
            ],
            rows,
        ),
    )
    section.add(SHARE_ESTIMATORS_TRIED)
    regime_coverage = float(np.mean(by_regime["expected_covered"] >= 0.5))
    worst = float(np.min(by_regime["auto"] - by_regime["blind"]))
    section.check(
        f"--auto ≥ told the share − {AUTO_SLACK} (mean over regimes)",
        f"{by_regime['auto'].mean():.3f} vs {by_regime['told'].mean():.3f}",
        bool(by_regime["auto"].mean() >= by_regime["told"].mean() - AUTO_SLACK),
    )
    section.check("--auto against a blind 30% in the worst regime", f"{worst:+.3f}", None)
    section.check(
        f"share error (estimated − true, absolute) ≤ {SHARE_ERROR} (mean over regimes)",
        f"{by_regime['share_error'].mean():.3f}",
        bool(by_regime["share_error"].mean() <= SHARE_ERROR),
    )
    section.check(
        f"expected-MAP@5 error (expected − measured, absolute) ≤ {EXPECTED_ERROR} (mean over regimes)",
        f"{by_regime['expected_error'].mean():.3f}",
        bool(by_regime["expected_error"].mean() <= EXPECTED_ERROR),
    )
    section.check(
        f"expected-MAP@5 interval holds the measured value in ≥ {COVERAGE:.0%} of regimes (most samples of a regime)",
        f"{regime_coverage:.0%} of regimes, {np.mean([r.expected_covered for r in runs]):.0%} of samples",
        bool(regime_coverage >= COVERAGE),
    )
    section.check(
        "the share's interval holds the true share in most samples of every regime",
        f"{np.mean(by_regime['share_covered'] >= 0.5):.0%} of regimes, "
        f"{np.mean([r.share_covered for r in runs]):.0%} of samples",
        bool(np.all(by_regime["share_covered"] >= 0.5)),
    )
    section.check(
        f"digits, issue #13's sample: --auto mean MAP@5 ≥ {DIGITS_TARGET}",
        f"{np.mean(floor):.3f}",
        bool(np.mean(floor) >= DIGITS_TARGET),
    )
    return section
