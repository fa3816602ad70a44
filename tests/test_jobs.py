import threading

import numpy as np
import pytest

from core.progress import Cancelled, Watch
from core.session.jobs import CANCELLED, DONE, FAILED, RUNNING, Jobs

WAIT = 10  # seconds a test waits for a job's thread at most


def test_the_same_key_asked_for_at_once_starts_one_job():
    jobs, runs, go = Jobs(keep=4), [], threading.Event()

    def work(watch):
        runs.append(1)
        go.wait(WAIT)
        return "result"

    asked = []
    threads = [
        threading.Thread(target=lambda: asked.append(jobs.start("key", work))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len({id(job) for job in asked}) == 1
    job = asked[0]
    assert job.state == RUNNING and not job.over
    go.set()
    assert job.wait(WAIT)
    assert (job.state, job.result, len(runs)) == (DONE, "result", 1)
    assert jobs.start("key", work) is job  # a finished job is read, not run again
    assert len(runs) == 1


def test_progress_is_the_last_step_reported():
    jobs, reported, go = Jobs(keep=4), threading.Event(), threading.Event()

    def work(watch):
        watch.step(3, 4, "searching")
        reported.set()
        go.wait(WAIT)
        watch.stage("fitting")
        return None

    job = jobs.start("key", work)
    assert reported.wait(WAIT)
    assert (job.fraction, job.stage) == (0.75, "searching")
    go.set()
    job.wait(WAIT)
    assert (job.fraction, job.stage) == (None, "fitting")


def test_cancel_stops_the_work_at_its_next_step_and_again_starts_it_anew():
    jobs, started, steps = Jobs(keep=4), threading.Event(), []

    def work(watch):
        started.set()
        for step in range(1000):
            watch.step(step, 1000, "counting")
            steps.append(step)
            threading.Event().wait(0.001)
        return "finished"

    job = jobs.start("key", work)
    assert started.wait(WAIT)
    job.cancel()
    assert job.wait(WAIT)
    assert job.state == CANCELLED and job.result is None and len(steps) < 1000
    assert jobs.start("key", work) is job  # kept, so the page can say it was cancelled
    again = jobs.start("key", lambda watch: "anew", again=True)
    assert again is not job and again.wait(WAIT) and again.result == "anew"


def test_a_failure_carries_its_error_and_runs_again_when_asked_for():
    jobs = Jobs(keep=4)

    def broken(watch):
        raise ValueError("no train split")

    job = jobs.start("key", broken)
    assert job.wait(WAIT)
    assert (
        job.state == FAILED
        and isinstance(job.error, ValueError)
        and "no train split" in str(job.error)
    )
    retried = jobs.start("key", lambda watch: 7)
    assert retried is not job and retried.wait(WAIT) and retried.result == 7


def test_only_the_latest_ended_jobs_are_kept():
    jobs = Jobs(keep=2)
    for key in range(4):
        jobs.start(key, lambda watch, key=key: key).wait(WAIT)
    jobs.start("one more", lambda watch: None).wait(WAIT)
    assert jobs.get(0) is None and jobs.get(1) is None
    assert jobs.get(3).result == 3


def test_a_watch_without_a_stop_never_cancels_and_a_set_stop_always_does():
    heard = []
    Watch(lambda *step: heard.append(step)).step(1, 2, "stage")
    assert heard == [(1, 2, "stage")]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="cancelled during stage"):
        Watch(stop=stop).step(1, 2, "stage")


def test_keep_must_be_positive():
    with pytest.raises(ValueError, match="keep must be at least 1 ended job, got 0"):
        Jobs(keep=0)


def test_a_projection_watched_by_a_stopped_watch_stops_at_its_first_stage():
    from core.maps.projection import ProjectionConfig, project

    stop = threading.Event()
    stop.set()
    rows = np.random.default_rng(0).normal(size=(30, 8))
    with pytest.raises(Cancelled, match="cancelled during PCA"):
        project(
            rows[:20], rows[20:], ProjectionConfig(method="pca"), progress=Watch(stop=stop).stage
        )


def test_busy_while_any_job_runs():
    jobs, go = Jobs(keep=4), threading.Event()
    assert not jobs.busy()
    job = jobs.start("key", lambda watch: go.wait(WAIT))
    assert jobs.busy()
    go.set()
    assert job.wait(WAIT)
    assert not jobs.busy()
