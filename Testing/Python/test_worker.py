"""The panel's worker thread: one thread for every job, callbacks on the caller's thread."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError
from VISTA3DSlicerLib.worker import Worker

#: Seconds a test waits for the other thread before it gives up (only reached when it fails).
PATIENCE = 10


@pytest.fixture
def worker():
    worker = Worker()
    yield worker
    worker.shutdown(timeout=PATIENCE)


def gate() -> threading.Event:
    """An event a job waits on, so the test decides when the job goes on."""
    return threading.Event()


def blocker(started: threading.Event, proceed: threading.Event, result: object = None):
    """A job function that says it started and then waits for ``proceed``."""

    def function(progress, cancel):
        started.set()
        assert proceed.wait(PATIENCE)
        cancel.raise_if_cancelled()
        return result

    return function


def test_jobs_run_in_order_on_one_thread_that_is_not_the_callers(worker):
    runs = []
    jobs = [
        worker.submit(lambda progress, cancel, i=i: runs.append((i, threading.get_ident())), name=f"job {i}")
        for i in range(5)
    ]
    jobs[-1].wait(PATIENCE)
    assert [i for i, _ in runs] == [0, 1, 2, 3, 4]
    threads = {ident for _, ident in runs}
    assert len(threads) == 1
    assert threads != {threading.get_ident()}
    worker.submit(lambda progress, cancel: runs.append((5, threading.get_ident())), name="later").wait(PATIENCE)
    assert runs[-1][1] in threads  # the thread lives on between bursts of work


def test_callbacks_run_on_the_thread_that_dispatches(worker):
    seen = {}

    def function(progress, cancel):
        seen["job"] = threading.get_ident()
        progress(1, 1, "half way")
        return 42

    def gui_thread():
        seen["gui"] = threading.get_ident()
        job = worker.submit(
            function, name="answer",
            on_progress=lambda *step: seen.setdefault("progress", threading.get_ident()),
            on_done=lambda result: seen.setdefault("done", threading.get_ident()),
        )
        job.wait(PATIENCE)

    gui = threading.Thread(target=gui_thread)
    gui.start()
    gui.join(PATIENCE)
    assert seen["progress"] == seen["done"] == seen["gui"]
    assert seen["job"] != seen["gui"]


def test_callbacks_wait_for_dispatch(worker):
    finished = []
    job = worker.submit(lambda progress, cancel: "result", name="quiet", on_done=finished.append)
    while not job.done:  # no dispatch: the job finishes but its callback stays queued
        time.sleep(0.001)
    assert finished == []
    assert worker.dispatch() == 1
    assert finished == ["result"]
    assert worker.dispatch() == 0


def test_wait_pumps_and_fires_on_done_before_it_returns(worker):
    pumped, done = gate(), []
    job = worker.submit(blocker(gate(), pumped, "segmented"), name="pumped", on_done=done.append)
    # The job goes on only once wait has called the pump: a wait that does not pump fails here.
    assert job.wait(PATIENCE, pump=pumped.set) == "segmented"
    assert done == ["segmented"]
    assert job.result() == "segmented"


def test_wait_times_out_and_the_job_goes_on(worker):
    started, proceed = gate(), gate()
    job = worker.submit(blocker(started, proceed, "late"), name="slow")
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.01)
    assert not job.done and worker.busy
    proceed.set()
    assert job.wait(PATIENCE) == "late"
    assert not worker.busy


def test_progress_reaches_the_caller_latest_first(worker):
    reported, proceed, seen = gate(), gate(), []

    def function(progress, cancel):
        for step in (1, 2, 3):
            progress(step, 3, f"window {step} of 3")
        reported.set()
        assert proceed.wait(PATIENCE)
        progress(3, 3, "writing")

    job = worker.submit(function, name="windows", on_progress=lambda *step: seen.append(step))
    assert reported.wait(PATIENCE)
    assert worker.dispatch() == 1  # three reports since the last dispatch: only the latest matters
    assert seen == [(3, 3, "window 3 of 3")]
    proceed.set()
    job.wait(PATIENCE)
    assert seen == [(3, 3, "window 3 of 3"), (3, 3, "writing")]


def test_cancelling_a_running_job_stops_it_and_the_next_job_runs(worker):
    started, proceed, errors = gate(), gate(), []
    job = worker.submit(blocker(started, proceed, "unwanted"), name="long", on_error=errors.append)
    following = worker.submit(lambda progress, cancel: "next", name="next")
    assert started.wait(PATIENCE)
    job.cancel()
    proceed.set()
    with pytest.raises(Cancelled):
        job.wait(PATIENCE)
    assert [type(e) for e in errors] == [Cancelled]
    assert following.wait(PATIENCE) == "next"


def test_a_job_cancelled_while_running_is_cancelled_even_if_it_returns(worker):
    started, proceed = gate(), gate()

    def ignores_its_token(progress, cancel):
        started.set()
        assert proceed.wait(PATIENCE)
        return "stale"

    job = worker.submit(ignores_its_token, name="stubborn")
    assert started.wait(PATIENCE)
    job.cancel()
    proceed.set()
    with pytest.raises(Cancelled):
        job.wait(PATIENCE)


def test_a_pending_job_is_replaced_by_a_newer_one_with_its_key(worker):
    started, proceed, ran, errors = gate(), gate(), [], []
    worker.submit(blocker(started, proceed), name="busy")
    assert started.wait(PATIENCE)
    first = worker.submit(
        lambda progress, cancel: ran.append("first"), name="first", key="liver", on_error=errors.append
    )
    other = worker.submit(lambda progress, cancel: ran.append("other"), name="other", key="spleen")
    latest = worker.submit(lambda progress, cancel: ran.append("latest"), name="latest", key="liver")
    assert first.done  # withdrawn at once, not when the worker reaches it
    proceed.set()
    latest.wait(PATIENCE)
    assert ran == ["other", "latest"]
    assert other.done
    with pytest.raises(Cancelled):
        first.result()
    assert [type(e) for e in errors] == [Cancelled]


def test_a_cancelled_pending_job_never_starts(worker):
    started, proceed, ran = gate(), gate(), []
    worker.submit(blocker(started, proceed), name="busy")
    assert started.wait(PATIENCE)
    pending = worker.submit(lambda progress, cancel: ran.append("pending"), name="pending")
    pending.cancel()
    proceed.set()
    with pytest.raises(Cancelled):
        pending.wait(PATIENCE)
    worker.submit(lambda progress, cancel: None, name="after").wait(PATIENCE)
    assert ran == []


def test_errors_reach_on_error_and_the_worker_keeps_working(worker, caplog):
    errors = []
    user_error = VISTA3DError("The point is outside the volume.")

    def refuses(progress, cancel):
        raise user_error

    def has_a_bug(progress, cancel):
        raise ValueError("shapes do not match")

    with caplog.at_level(logging.ERROR, logger="VISTA3DSlicerLib.worker"):
        refused = worker.submit(refuses, name="refused", on_error=errors.append)
        broken = worker.submit(has_a_bug, name="broken", on_error=errors.append)
        with pytest.raises(ValueError, match="shapes do not match"):
            broken.wait(PATIENCE)
    with pytest.raises(VISTA3DError):
        refused.result()
    assert errors[0] is user_error
    assert isinstance(errors[1], ValueError)
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "broken" in logged[0].getMessage()  # the bug, with its traceback; not the refusal
    assert worker.submit(lambda progress, cancel: "still here", name="after").wait(PATIENCE) == "still here"


def test_shutdown_cancels_everything_and_takes_no_more_jobs(worker):
    started, errors = gate(), []

    def until_cancelled(progress, cancel):
        started.set()
        while True:
            cancel.raise_if_cancelled()
            time.sleep(0.001)  # the job's "work" between checks

    running = worker.submit(until_cancelled, name="running", on_error=errors.append)
    pending = worker.submit(lambda progress, cancel: None, name="pending", on_error=errors.append)
    assert started.wait(PATIENCE)
    assert worker.busy
    assert worker.shutdown(timeout=PATIENCE)
    assert running.done and pending.done and not worker.busy
    assert worker.dispatch() == 2
    assert [type(e) for e in errors] == [Cancelled, Cancelled]
    with pytest.raises(RuntimeError):
        worker.submit(lambda progress, cancel: None, name="too late")


def test_wait_on_the_worker_thread_is_refused(worker):
    submitted, jobs = gate(), []

    def waits_for_itself(progress, cancel):
        assert submitted.wait(PATIENCE)
        jobs[0].wait(PATIENCE)  # would hang for ever: refused with a RuntimeError

    jobs.append(worker.submit(waits_for_itself, name="self"))
    submitted.set()
    with pytest.raises(RuntimeError, match="itself"):
        jobs[0].wait(PATIENCE)


def test_run_applies_the_result_on_the_caller_s_thread_and_returns_what_apply_made(worker):
    threads, done = [], []
    pumped = []
    value = worker.run(lambda progress, cancel: threading.current_thread().name, name="job",
                       apply=lambda result: (threads.append(threading.current_thread()), result + " applied")[1],
                       on_done=done.append, pump=lambda: pumped.append(1))
    assert value == "VISTA3D worker applied" and done == [value]
    assert threads == [threading.current_thread()] and pumped


def test_run_raises_an_error_of_apply_like_the_job_s_own_and_tells_on_error(worker):
    errors = []

    def apply(result):
        raise VISTA3DError("The segmentation was deleted meanwhile.")

    with pytest.raises(VISTA3DError, match="deleted meanwhile"):
        worker.run(lambda progress, cancel: 1, name="job", apply=apply, on_error=errors.append)
    assert [str(e) for e in errors] == ["The segmentation was deleted meanwhile."]


def test_run_without_waiting_returns_the_job_and_a_set_token_cancels_a_waited_one(worker):
    from VISTA3DSlicerLib.progress import CancelToken

    started, proceed = gate(), gate()
    job = worker.run(blocker(started, proceed, "later"), name="background", wait=False)
    assert not job.done
    proceed.set()
    assert job.wait(timeout=PATIENCE) == "later"

    token = CancelToken()
    started, proceed = gate(), gate()

    def pump():
        if token.cancelled:  # the pump after: run has cancelled the job by now; let it go on to see that
            proceed.set()
        elif started.is_set():
            token.cancel()  # the user pressed Cancel while the job ran

    with pytest.raises(Cancelled):
        worker.run(blocker(started, proceed), name="cancelled", pump=pump, cancel=token)
