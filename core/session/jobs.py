"""Long work shared by the whole server: each job runs once per key in a background thread, reports progress and can be cancelled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from core.progress import Cancelled, Watch

# What a job can be doing or have ended as.
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class Job:
    """One run of a piece of work in its own thread, started at once: its state, progress, and result or error."""

    def __init__(self, key: Hashable, work: Callable[[Watch], Any]) -> None:
        self.key = key
        self.state = RUNNING
        self.result: Any = None  # what the work returned, once DONE
        self.error: BaseException | None = None  # what it raised, once FAILED
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._progress: tuple[float | None, str] = (None, "starting")
        threading.Thread(
            target=self._run, args=(work,), name=f"job-{key!r}"[:60], daemon=True
        ).start()

    def _run(self, work: Callable[[Watch], Any]) -> None:
        try:
            self.result, self.state = work(Watch(self._report, self._stop)), DONE
        except Cancelled:
            self.state = CANCELLED
        except BaseException as error:
            self.error, self.state = error, FAILED
        finally:
            self._ended.set()

    def _report(self, done: int, total: int, stage: str) -> None:
        self._progress = (min(done / total, 1.0) if total else None, stage)

    @property
    def fraction(self) -> float | None:
        """The share of the current stage done, None when the stage does not count its steps."""
        return self._progress[0]

    @property
    def stage(self) -> str:
        """What the job is doing, for people; how far along it is, is the fraction."""
        return self._progress[1]

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def cancel(self) -> None:
        """Ask the work to stop at its next step; it ends CANCELLED (or DONE, if it finished first)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends or `timeout` seconds pass; True when it has ended."""
        return self._ended.wait(timeout)

    @property
    def over(self) -> bool:
        return self._ended.is_set()


class Jobs:
    """The server's jobs by key: asking twice for the same work starts it once.

    A job that failed runs again when next asked for (its cause may be gone); a cancelled one stays,
    so a page can say it was cancelled, until it is asked for `again`. At most `keep` ended jobs are
    kept (their results are what later visits read); the earliest started go first.
    """

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 ended job, got {keep}")
        self.keep = keep
        self._jobs: dict[Hashable, Job] = {}
        self._guard = threading.Lock()

    def start(self, key: Hashable, work: Callable[[Watch], Any], again: bool = False) -> Job:
        """The job under `key`, started with `work` unless one runs or ended well already (`again`: even if cancelled)."""
        with self._guard:
            job = self._jobs.get(key)
            restart = job is not None and (
                job.state == FAILED or (again and job.state == CANCELLED)
            )
            if job is not None and not restart:
                return job
            self._jobs.pop(key, None)
            job = self._jobs[key] = Job(key, work)
            self._forget_oldest_ended()
            return job

    def get(self, key: Hashable) -> Job | None:
        with self._guard:
            return self._jobs.get(key)

    def busy(self) -> bool:
        """Whether any job is still running."""
        with self._guard:
            return any(not job.over for job in self._jobs.values())

    def _forget_oldest_ended(self) -> None:
        ended = [key for key, job in self._jobs.items() if job.over]
        for key in ended[: max(0, len(ended) - self.keep)]:
            del self._jobs[key]
