"""How a long computation reports how far it got and learns that it should stop: the Watch it is handed, and Cancelled."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


class Cancelled(Exception):
    """A computation stopped at one of its steps because whoever started it asked it to."""


@dataclass(frozen=True)
class Watch:
    """What a long computation reports to, and the signal that stops it; the default watches nothing."""

    # called with (done, total, stage) at each step
    report: Callable[[int, int, str], None] | None = None
    # once set, the computation raises Cancelled at its next step
    stop: threading.Event | None = None

    def step(self, done: int, total: int, stage: str) -> None:
        """Raise Cancelled if the stop was asked for, else report `done` of `total` steps of `stage`."""
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(f"cancelled during {stage}")
        if self.report is not None:
            self.report(done, total, stage)

    def stage(self, stage: str) -> None:
        """A step of a computation that counts only stages (a projection): no fraction to report."""
        self.step(0, 0, stage)
