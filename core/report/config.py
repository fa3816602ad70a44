"""What a shared report shows beyond the analysis: its own options, light enough for the command line's parser."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.maps.projection import METHOD_CHOICES, PROJECTION_METHODS

MAX_CARDS_PER_KIND = 8


@dataclass(frozen=True)
class ReportConfig:
    """The map's projection and how many test items the report shows with their neighbours."""

    map_method: str = field(
        default="umap",
        metadata={
            "help": f"projection drawn as the report's map: {METHOD_CHOICES}",
            "choices": PROJECTION_METHODS,
        },
    )
    cards: int = field(
        default=4,
        metadata={
            "help": f"test items shown with their neighbours for each of hits, misses, flagged and flips (at most {MAX_CARDS_PER_KIND})"
        },
    )

    def __post_init__(self):
        if self.map_method not in PROJECTION_METHODS:
            raise ValueError(
                f"map_method must be one of {PROJECTION_METHODS}, got {self.map_method!r}"
            )
        if not 0 <= self.cards <= MAX_CARDS_PER_KIND:
            raise ValueError(f"cards must be between 0 and {MAX_CARDS_PER_KIND}, got {self.cards}")
