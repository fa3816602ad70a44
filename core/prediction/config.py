"""PredictConfig: how test items are scored, flagged and labelled, as data with a default and help per field."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.detection.distractors import SCORE_MODES
from core.prediction.placement import MAX_K, PLACEMENTS, check_k


@dataclass(frozen=True)
class PredictConfig:
    """How test items are scored, flagged and labelled."""

    k: int = field(
        default=5,
        metadata={
            "help": f"labels per prediction row (MAP@k) and neighbours shown, 1 to {MAX_K}; a train set of fewer classes gives shorter rows"
        },
    )
    score_mode: str = field(
        default="max",
        metadata={
            "help": "distractor score: best similarity to train (max) or mean of the top score_k",
            "choices": SCORE_MODES,
        },
    )
    score_k: int = field(
        default=5, metadata={"help": "neighbours averaged when score_mode is mean"}
    )
    contamination: float = field(
        default=0.3,
        metadata={
            "help": "share of test flagged when no threshold is given (30%: about the share of distractors such test sets hold); with auto, the simulated share"
        },
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "a fixed cosine similarity threshold: test items scoring below it are flagged; overrides contamination"
        },
    )
    auto: bool = field(
        default=False,
        metadata={
            "help": "choose the threshold without test truth or a contamination: where the expected MAP@k averaged over class bootstraps of train peaks; the contamination when the evidence does not back that choice"
        },
    )
    max_false_flag: float | None = field(
        default=None,
        metadata={
            "help": "flag at most this share of known-class test items (split-conformal threshold on train leave-one-out scores); overrides contamination"
        },
    )
    placement: str | None = field(
        default=None,
        metadata={
            "help": "where -1 goes: first for flagged items only, or optimal (flagged first, the others at the rank with the highest expected AP@k); default: whichever scores higher on train",
            "choices": PLACEMENTS,
        },
    )
    validation_rounds: int = field(
        default=20,
        metadata={
            "help": "class bootstrap rounds of the placement model: the intervals of the share and expected MAP@k, and the auto threshold"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the class draws of validation"})

    def __post_init__(self):
        check_k(self.k)
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if self.score_k < 1:
            raise ValueError(f"score_k must be at least 1, got {self.score_k}")
        if not 0.0 <= self.contamination <= 1.0:
            raise ValueError(
                f"contamination must be a share between 0 and 1, got {self.contamination}"
            )
        chosen = [
            name
            for name, value in (
                ("threshold", self.threshold),
                ("auto", self.auto or None),
                ("max_false_flag", self.max_false_flag),
            )
            if value is not None
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"give one of threshold, auto and max_false_flag, not {' and '.join(chosen)}"
            )
        if self.max_false_flag is not None and not 0.0 < self.max_false_flag < 1.0:
            raise ValueError(
                f"max_false_flag is a share between 0 and 1 (exclusive), got {self.max_false_flag}"
            )
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0 + 1e-6:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.validation_rounds < 1:
            raise ValueError(f"validation_rounds must be at least 1, got {self.validation_rounds}")
