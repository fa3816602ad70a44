"""What an analysis reports at one threshold: counts, the placement of "-1", MAP@k expected without test truth, and what
the truth measures when it is known."""

from __future__ import annotations

from dataclasses import dataclass

from core.detection.metrics import DistractorReport


@dataclass(frozen=True)
class Measured:
    """The figures only test truth gives."""

    map_at_k: float  # MAP@k of the rows as predicted (the analysis's placement of "-1")
    map_by_placement: dict[str, float]  # MAP@k with "-1" placed each way, by placement name
    expected_map_by_placement: dict[str, float | None]  # what the placement model expects of each
    mean_precision: float | None  # mP@k of test items whose class is in train; None without any
    top1_accuracy: float  # share of test items whose first label is right ("-1" for distractors)
    detection: DistractorReport  # how the flags match the true distractors


@dataclass(frozen=True)
class AnalysisReport:
    """An analysis at one threshold; `measured` is None without test truth."""

    k: int  # predictions per test item, the k of MAP@k
    threshold: float  # items scoring below it are flagged as distractors
    test_items: int
    flagged: int  # test items flagged as distractors
    placement: str  # where "-1" goes in a kept item's row: "first" or "optimal"
    placement_source: str  # how the placement was chosen, for people
    estimated_distractor_share: float | None  # the placement model's estimate; None without a model
    estimated_distractor_share_interval: (
        tuple[float, float] | None
    )  # where the true share should fall
    expected_map: float | None  # MAP@k the placement model expects without truth
    expected_map_interval: tuple[float, float] | None  # where the measured MAP@k should fall
    measured: Measured | None

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.test_items if self.test_items else 0.0

    @property
    def measured_map(self) -> float | None:
        """MAP@k against the test truth; None without it."""
        return None if self.measured is None else self.measured.map_at_k

    def as_dict(self) -> dict:
        """The report as `evaluate --json` writes it: flat, with MAP@k keys named by their k."""
        k = self.k
        flat = {
            "threshold": self.threshold,
            "test_items": self.test_items,
            "flagged": self.flagged,
            "flagged_share": self.flagged_share,
            "placement": f"{self.placement} ({self.placement_source})",
            "estimated_distractor_share": self.estimated_distractor_share,
            "estimated_distractor_share_interval": self.estimated_distractor_share_interval,
            f"expected_MAP@{k}": self.expected_map,
            f"expected_MAP@{k}_interval": self.expected_map_interval,
        }
        if self.measured is None:
            return flat
        flat[f"MAP@{k}"] = self.measured.map_at_k
        for placement, value in self.measured.map_by_placement.items():
            flat[f"MAP@{k}_{placement}"] = value
            flat[f"expected_MAP@{k}_{placement}"] = self.measured.expected_map_by_placement[
                placement
            ]
        flat[f"mP@{k}"] = self.measured.mean_precision
        flat["top1_accuracy"] = self.measured.top1_accuracy
        flat.update(
            {f"distractor_{key}": value for key, value in self.measured.detection.as_dict().items()}
        )
        return flat
