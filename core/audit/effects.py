"""What the findings change: MAP@k with and without the leaked test images, and the analysis after dropping or relabelling train images."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from core.analysis.pipeline import Analysis, analyse
from core.analysis.report import AnalysisReport
from core.audit.findings import Audit, Finding, csv_text
from core.prediction.metrics import average_precision_at_k
from core.progress import Watch
from core.records import DISTRACTOR, Embeddings


@dataclass(frozen=True)
class Leakage:
    """Train↔test near-duplicates and, with test truth, what they do to MAP@k."""

    pairs: int  # test images with a train near-duplicate at the cut
    same_label: int | None  # … whose true label is their duplicate's (None without test truth)
    map_as_analysed: float | None  # MAP@k of the analysis's predictions
    map_taking_duplicate_label: (
        float | None
    )  # … when each such test image takes its duplicate's label first
    map_without_duplicates: (
        float | None
    )  # … over the test images without a near-duplicate (None if none is left)


def leakage(audit: Audit, cut: float | None = None) -> Leakage:
    """How many test images copy a train image at the cut, and with test truth the leakage effect on MAP@k."""
    analysis = audit.analysis
    pairs = audit.near_duplicates(cut)
    truth = analysis.truth
    if truth is None:
        return Leakage(len(pairs), None, None, None, None)
    k = analysis.config.k
    rows = analysis.predictions()
    row_of = {image_id: row for row, image_id in enumerate(analysis.test.ids.tolist())}
    taken = list(rows)
    for pair in pairs:
        row = row_of[pair.id]
        others = [label for label in rows[row] if label not in (pair.suggested_label, DISTRACTOR)]
        taken[row] = [pair.suggested_label, *others][:k]
    leaked = np.zeros(len(rows), bool)
    leaked[[row_of[pair.id] for pair in pairs]] = True

    def mean_ap(predicted, keep=slice(None)) -> float | None:
        precisions = np.array([average_precision_at_k(t, p, k) for t, p in zip(truth, predicted)])
        return float(precisions[keep].mean()) if precisions[keep].size else None

    return Leakage(
        len(pairs),
        sum(truth[row_of[pair.id]] == pair.suggested_label for pair in pairs),
        mean_ap(rows),
        mean_ap(taken),
        mean_ap(rows, ~leaked),
    )


@dataclass(frozen=True)
class Change:
    """An analysis's report before and after train images are dropped or relabelled."""

    dropped: int
    relabelled: int
    before: AnalysisReport
    after: AnalysisReport


def changed_train(
    analysis: Analysis, drop: Collection[str] = (), relabel: Mapping[str, str] | None = None
) -> Embeddings:
    """The analysis's embeddings with the `drop` train ids left out and the `relabel` ones given a new label."""
    relabel = dict(relabel or {})
    train, test = analysis.train, analysis.test
    known = set(train.ids.tolist())
    unknown = [image_id for image_id in [*drop, *relabel] if image_id not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} ids are not train images, the first {unknown[0]!r}")
    keep = ~np.isin(train.ids, list(drop))
    if not keep.any():
        raise ValueError("dropping every train image leaves nothing to search against")
    labels = np.array([relabel.get(i, label) for i, label in zip(train.ids, train.labels)], object)
    kept = Embeddings(
        train.ids[keep], train.splits[keep], labels[keep], train.vectors[keep], train.model
    )
    return Embeddings.joined([kept, test], train.model, train.dim)


def what_if(
    analysis: Analysis,
    drop: Collection[str] = (),
    relabel: Mapping[str, str] | None = None,
    watch: Watch = Watch(),
) -> Change:
    """The analysis redone, with its settings, on train without `drop` and with `relabel`; nothing is written."""
    after = analyse(changed_train(analysis, drop, relabel), analysis.config, watch=watch)
    return Change(len(drop), len(relabel or {}), analysis.report(), after.report())


def cleaned_train_csv(
    analysis: Analysis, drop: Collection[str] = (), relabel: Mapping[str, str] | None = None
) -> str:
    """The train list, `id,label`, without the dropped images and with the relabelled ones' new labels."""
    cleaned = changed_train(analysis, drop, relabel)
    train = cleaned.subset("train")
    return csv_text(("id", "label"), zip(train.ids.tolist(), train.labels.tolist()))


def relabel_csv(findings: list[Finding]) -> str:
    """The suspected mislabels as a list to act on: `id,label,suggested_label,score`."""
    return csv_text(
        ("id", "label", "suggested_label", "score"),
        (
            (finding.id, finding.label, finding.suggested_label, f"{finding.score:.6f}")
            for finding in findings
        ),
    )
