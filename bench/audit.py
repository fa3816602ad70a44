"""The data audit: near-duplicate and mislabel detection on digits with known problems injected (beside cleanlab), and its cost at 130k."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fixtures import retrieval_embeddings
from bench.report import Section, seconds, table
from bench.search import SCREEN_SIZES
from bench.timing import median, run_python
from core.records import DISTRACTOR, TEST, TRAIN, Embeddings

FULL = {"seeds": 5, "per_class": (3, 30), "cost_size": "130k", "cost_rounds": 3}
QUICK = {"seeds": 2, "per_class": (30,), "cost_size": "13k", "cost_rounds": 1}
FLIPPED_SHARE = 0.05  # train labels flipped to another class
COPIED_SHARE = 0.2  # train images copied into test, each by one of COPIES
PRECISION_TARGET = RECALL_TARGET = 0.95  # near-duplicates at the default cut (issue #25)
# Train images a class from which the near-duplicate target is judged: with 3 a class, 20% of train is
# 4 copies a seed, and each natural near-identical scan of the digits moves precision by a fifth.
JUDGED_FROM = 10
COST_TARGET = 0.2  # the audit adds at most this share to the first analysis at 130k
_SIDE = 64  # the digits as write_digits_dataset writes them: 8x8 upscaled to 64x64 grey
CLEANLAB_HOW = "pip install cleanlab"  # bench-only: the app does not need it


def _image(ink: np.ndarray) -> Image.Image:
    """An 8x8 digit (0..16 ink) as the 64x64 grey picture write_digits_dataset saves."""
    grey = (255 - ink.reshape(8, 8) * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey).resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


def _ink(image: Image.Image) -> np.ndarray:
    """A picture back to 8x8 ink levels, as the vectors are made of."""
    small = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), np.float64)
    return ((255 - small) * (16 / 255)).ravel()


def _resized(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(24, 48))
    smaller = image.resize((side, side), Image.Resampling.BILINEAR)
    return smaller.resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


def _reencoded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _cropped(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of one pixel (of 64) off two sides, scaled back."""
    left, top = (int(value) for value in rng.integers(0, 2, 2))
    box = (left, top, _SIDE - 1 + left, _SIDE - 1 + top)
    return image.crop(box).resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


COPIES = {"resized": _resized, "re-encoded (JPEG)": _reencoded, "cropped": _cropped}


@dataclass(frozen=True)
class Injected:
    """Digits vectors with known problems: which train labels were flipped and which test images copy which train image."""

    embeddings: Embeddings
    flipped: set[str]  # train ids whose label was flipped
    copies: dict[str, str]  # test id → the train id it copies
    true_train_labels: dict[str, str]  # train id → its label before any flip


def injected_digits(
    seed: int,
    per_class: int,
    flipped_share: float = FLIPPED_SHARE,
    copied_share: float = COPIED_SHARE,
) -> Injected:
    """scikit-learn's digits as bench/quality.py makes them (0–6 known, 7–9 distractors, centred unit pixels),
    every image through the 64-pixel picture the dataset on disk holds, with `per_class` train images a class,
    `flipped_share` of train labels flipped and `copied_share` of train images copied into test
    (resized, re-encoded or cropped; no share of either injects nothing)."""
    from sklearn.datasets import load_digits

    from core.io.demo import DIGIT_TRAIN_CLASSES

    digits = load_digits()
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [
            rng.choice(np.flatnonzero(digits.target == digit), per_class, replace=False)
            for digit in DIGIT_TRAIN_CLASSES
        ]
    )
    test = np.setdiff1d(np.arange(len(digits.target)), train)
    images = [_image(ink) for ink in digits.data]
    inks = [_ink(image) for image in images]
    labels = [str(t) if t in DIGIT_TRAIN_CLASSES else DISTRACTOR for t in digits.target]
    ids = [f"digit-{row}" for row in range(len(labels))]
    train_ids, test_ids = [ids[row] for row in train], [ids[row] for row in test]
    train_labels = [labels[row] for row in train]
    true_train_labels = dict(zip(train_ids, train_labels))
    flipped = set()
    for position in rng.choice(len(train), round(flipped_share * len(train)), replace=False):
        others = [str(d) for d in DIGIT_TRAIN_CLASSES if str(d) != train_labels[position]]
        train_labels[position] = str(rng.choice(others))
        flipped.add(train_ids[position])
    copies, copy_inks, copy_labels = {}, [], []
    for position in rng.choice(len(train), round(copied_share * len(train)), replace=False):
        row = train[position]
        how = list(COPIES)[len(copies) % len(COPIES)]
        copy_id = f"copy-{len(copies)}-of-{ids[row]}"
        copies[copy_id] = ids[row]
        copy_inks.append(_ink(COPIES[how](images[row], rng)))
        copy_labels.append(labels[row])
    pixels = np.array([inks[row] for row in train] + [inks[row] for row in test] + copy_inks)
    vectors = pixels - pixels.mean(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    all_ids = train_ids + test_ids + list(copies)
    return Injected(
        Embeddings(
            ids=np.array(all_ids),
            splits=np.array([TRAIN] * len(train) + [TEST] * (len(test) + len(copies))),
            labels=np.array(
                train_labels + [labels[row] for row in test] + copy_labels, dtype=object
            ),
            vectors=vectors.astype(np.float32),
            model="centred pixels",
        ),
        flipped,
        copies,
        true_train_labels,
    )


def _precision_recall(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), (hits / len(truth) if truth else 1.0)


def _cleanlab_issues(train: Embeddings) -> set[str] | None:
    """cleanlab's find_label_issues on out-of-sample probabilities from cross-validated logistic regression
    on the same vectors (as its docs recommend); None when cleanlab is not installed."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    _, codes = np.unique(train.labels.astype(str), return_inverse=True)
    folds = max(2, min(5, int(np.bincount(codes).min())))
    probabilities = cross_val_predict(
        LogisticRegression(max_iter=2000),
        train.vectors,
        codes,
        cv=StratifiedKFold(folds, shuffle=True, random_state=0),
        method="predict_proba",
    )
    return set(train.ids[find_label_issues(codes, probabilities)].tolist())


def _quality(seeds: int, per_class: int) -> dict:
    """Mean near-duplicate and mislabel precision/recall over seeds, and cleanlab's beside them."""
    from core.analysis.pipeline import analyse
    from core.audit.findings import audit
    from core.prediction.config import PredictConfig

    found: dict[str, list] = {"near": [], "ours": [], "cleanlab": [], "by_copy": [], "cuts": []}
    for seed in range(seeds):
        injected = injected_digits(seed, per_class)
        audited = audit(analyse(injected.embeddings, PredictConfig()))
        pairs = {(pair.id, pair.other_id) for pair in audited.near_duplicates()}
        found["near"].append(_precision_recall(pairs, set(injected.copies.items())))
        found["cuts"].append(audited.cuts["near_duplicate"].value)
        for number, copy in enumerate(injected.copies.items()):
            found["by_copy"].append((list(COPIES)[number % len(COPIES)], copy in pairs))
        found["ours"].append(_precision_recall({f.id for f in audited.mislabels}, injected.flipped))
        theirs = _cleanlab_issues(audited.analysis.train)
        if theirs is not None:
            found["cleanlab"].append(_precision_recall(theirs, injected.flipped))
    return found


def _clean(seeds: int, per_class: int) -> list[float]:
    """Findings of each kind per image of its scope on digits with nothing injected (the false-positive rate)."""
    from core.analysis.pipeline import analyse
    from core.audit.findings import KINDS, audit
    from core.prediction.config import PredictConfig

    rates = []
    for seed in range(seeds):
        clean = injected_digits(seed, per_class, flipped_share=0, copied_share=0)
        audited = audit(analyse(clean.embeddings, PredictConfig()))
        counts = audited.counts()
        n_train, n_test = len(audited.analysis.train.ids), len(audited.analysis.test.ids)
        per = {"near_duplicate": n_test, "mislabel": n_train, "duplicate": n_train + n_test}
        rates.append([counts[kind] / per.get(kind, n_train) for kind in KINDS])
    return list(np.mean(rates, axis=0))


def _cost_case(path: str) -> dict[str, float]:
    """The first analysis as the dashboard runs it (searches stored) and the audit after it, in this process."""
    from core.analysis.pipeline import analyse
    from core.audit.findings import audit
    from core.io.parquet import read_embeddings_checked
    from core.prediction.config import PredictConfig
    from core.search.store import SearchStore

    embeddings, _ = read_embeddings_checked(Path(path))
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        analysis = analyse(embeddings, PredictConfig(), SearchStore(Path(home)))
        analysed = time.perf_counter() - started
        started = time.perf_counter()
        audit(analysis)
        audited = time.perf_counter() - started
    return {"analysis": analysed, "audit": audited}


def _cost(section: Section, work: Path, size: str, rounds: int) -> None:
    from core.io.parquet import write_embeddings

    n_test, n_classes = SCREEN_SIZES[size]
    path = work / f"{size}.parquet"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_embeddings(path, retrieval_embeddings(n_test, n_classes))
    load = os.getloadavg()[0]
    runs = [
        {key: float(value) for key, value in run_python(["-m", "bench.audit", str(path)]).items()}
        for _ in range(rounds)
    ]
    ratio = median([run["audit"] / run["analysis"] for run in runs])
    section.add(
        f"**Cost at {size}** ({n_test:,} test × {3 * n_classes:,} train, synthetic CLIP-like 512-d): the first analysis "
        "as the dashboard runs it (test against train, train against itself, the placement model; searches stored) "
        f"and the audit after it, in the same fresh process, {rounds} run(s), medians; load average {load:.1f} when "
        f"this started. The audit reuses both searches of the analysis and searches nothing: test images are compared with those sharing one of their nearest train images.",
        table(
            ["first analysis", "audit", "audit / analysis"],
            [
                [
                    seconds(median([run["analysis"] for run in runs])),
                    seconds(median([run["audit"] for run in runs])),
                    f"{ratio:.1%}",
                ]
            ],
        ),
    )
    section.check(
        f"audit adds ≤ {COST_TARGET:.0%} to the first analysis at {size}",
        f"{ratio:.1%}",
        bool(ratio <= COST_TARGET) if size == "130k" else None,
    )


def _mean(pairs: list[tuple[float, float]]) -> str:
    precision, recall = np.mean(pairs, axis=0)
    return f"{precision:.3f} / {recall:.3f}"


def run(work: Path, quick: bool) -> Section:
    from core.audit.findings import KIND_NAMES, KINDS, MISLABEL_NEIGHBOURS

    plan = QUICK if quick else FULL
    section = Section(
        "11. Audit: near-duplicates and mislabels found, and the audit's cost", "11. Audit"
    )
    rows, near_rows, clean_rows = [], [], []
    near_met = mislabel_met = True
    for per_class in plan["per_class"]:
        found = _quality(plan["seeds"], per_class)
        precision, recall = np.mean(found["near"], axis=0)
        if per_class >= JUDGED_FROM:
            near_met &= bool(precision >= PRECISION_TARGET and recall >= RECALL_TARGET)
        by_copy = {
            how: np.mean([hit for kind, hit in found["by_copy"] if kind == how]) for how in COPIES
        }
        near_rows.append(
            [
                f"{per_class} a class",
                f"{np.mean(found['cuts']):.4f}",
                _mean(found["near"]),
                *(f"{by_copy[how]:.3f}" for how in COPIES),
            ]
        )
        if found["cleanlab"]:
            ours, theirs = np.mean(found["ours"], axis=0), np.mean(found["cleanlab"], axis=0)
            f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in (ours, theirs)]
            mislabel_met &= bool(f1[0] >= f1[1])
            cleanlab = f"{_mean(found['cleanlab'])} (F1 {f1[1]:.3f})"
            ours_shown = f"{_mean(found['ours'])} (F1 {f1[0]:.3f})"
        else:
            mislabel_met = None
            cleanlab = f"skipped: cleanlab is not installed (`{CLEANLAB_HOW}`)"
            ours_shown = _mean(found["ours"])
        rows.append([f"{per_class} a class", ours_shown, cleanlab])
        clean_rows.append(
            [f"{per_class} a class", *(f"{rate:.2%}" for rate in _clean(plan["seeds"], per_class))]
        )
    section.add(
        f"scikit-learn's digits as `bench/quality.py` makes them (centred unit pixels; 0–6 known, 7–9 distractors), each "
        f"image through the 64-pixel picture `demo --digits` writes, {plan['seeds']} seeds. Injected: {FLIPPED_SHARE:.0%} of "
        f"train labels flipped to another class, and {COPIED_SHARE:.0%} of train images copied into test, a third each "
        "resized (24–48 px and back), re-encoded (JPEG quality 40–90) and cropped (one pixel of 64 off two sides).",
        "**Train↔test near-duplicates at the default cut** (chosen from the data; precision / recall against the injected "
        "copies, and the share of each kind of copy found). The digits hold a few natural near-identical scans (a test "
        "digit at cosine 0.97–0.99 to a train digit it does not copy); each counts against precision here. With 3 train "
        "images a class 20% of train is 4 copies a seed, so one such scan moves precision by a fifth: that row is "
        f"reported, and the target is judged from {JUDGED_FROM} a class up.",
        table(["train images", "mean cut", "precision / recall", *COPIES], near_rows),
        f"**Suspected mislabels** (precision / recall against the flipped labels): ours flags a train image when none of its "
        f"{MISLABEL_NEIGHBOURS} nearest other train images shares its label; cleanlab's `find_label_issues` (defaults) is "
        "given out-of-sample probabilities from 5-fold (fewer when a class is smaller) cross-validated logistic regression "
        f"on the same vectors, as its docs recommend. cleanlab is a bench-only dependency: `{CLEANLAB_HOW}`; "
        "without it its column says so and its check is reported, not judged.",
        table(["train images", "ours", "cleanlab find_label_issues"], rows),
        "**Nothing injected**: findings of each kind per image (near-duplicates per test image, mislabels per train "
        "image, duplicate pairs per image, look-alike class pairs per train image): the false-positive rate.",
        table(["train images", *(KIND_NAMES[kind] for kind in KINDS)], clean_rows),
    )
    section.check(
        f"near-duplicates at the default cut ({JUDGED_FROM}+ train images a class): precision and recall ≥ {PRECISION_TARGET}",
        "; ".join(f"{row[0]}: {row[2]}" for row in near_rows),
        near_met,
    )
    section.check(
        "mislabels: F1 at least cleanlab's find_label_issues on the same vectors",
        "; ".join(f"{row[0]}: ours {row[1]}, cleanlab {row[2]}" for row in rows),
        mislabel_met,
    )
    _cost(section, work, plan["cost_size"], plan["cost_rounds"])
    return section


if __name__ == "__main__":
    # python -m bench.audit <parquet>: one run of _cost, its timings as KEY=value lines.
    for key, value in _cost_case(sys.argv[1]).items():
        print(f"{key}={value}")
