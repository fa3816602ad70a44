"""The distractor threshold a workspace keeps per dataset and model, and one browser tab's view of it."""

from __future__ import annotations

from dataclasses import dataclass

from core.analysis.threshold_steps import on_grid
from core.session.workspace import Workspace


def threshold_key(dataset: str, model: str) -> str:
    """The workspace key of a dataset's threshold for the vectors of one model identity."""
    return f"threshold:{dataset}:{model}"


def saved_threshold(ws: Workspace, dataset: str, model: str, default: float) -> float:
    """The threshold saved for this dataset and model, else `default` (the analysis's rule), on the slider's grid:
    every page shows and uses this one."""
    saved = ws.get(threshold_key(dataset, model))
    return on_grid(float(saved) if saved is not None else default)


def save_threshold(ws: Workspace, dataset: str, model: str, threshold: float) -> None:
    ws.set(threshold_key(dataset, model), float(threshold))


@dataclass
class TabThreshold:
    """One browser tab's threshold beside the one its workspace saved, which another tab may change.

    The tab keeps what it shows, the saved value it last read or wrote (so a change made elsewhere is
    told from its own), the threshold one run ago (for "what flips"), and a count of the thresholds
    set on the server (a box, another tab) that the browser's slider must take, as it otherwise keeps
    its own position."""

    shown: float | None = None
    synced: float | None = None
    previous: float | None = None
    origin: int = 0

    def follow(self, saved: float) -> bool:
        """Show `saved` when this tab shows nothing yet or another tab saved a new value; True in the latter case."""
        changed_elsewhere = self.synced is not None and saved != self.synced
        if self.shown is None or changed_elsewhere:
            self.set(saved)
        return changed_elsewhere

    def keep(self, threshold: float) -> float:
        """A threshold the slider rested on: shown, and the value to save."""
        self.shown = self.synced = threshold
        return threshold

    def set(self, threshold: float) -> float:
        """A threshold chosen on the server: shown, to save, and moved to by the slider."""
        self.origin += 1
        return self.keep(threshold)

    def moved_from(self) -> float:
        """The threshold of the run before this one (this run's at the first), and this run's remembered for the next."""
        previous = self.shown if self.previous is None else self.previous
        self.previous = self.shown
        return previous
