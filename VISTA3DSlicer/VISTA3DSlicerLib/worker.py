"""The one long-lived thread that does all torch and GPU work for the Slicer panel.

Why one thread that lives as long as the panel: PyTorch's cuDNN plan cache is thread-local,
so a fresh thread per click plans its convolutions again (about 1 s per click), while a warm
persistent thread reuses them (about 0.1 s per click).

Why callbacks come back to the caller's thread: Qt and MRML are not thread-safe, so what a job
returns must be written into the scene on the GUI thread. The worker queues each job's
progress, result and error, and ``Worker.dispatch`` runs those callbacks on whichever thread
calls it: the panel calls it from a timer (in Slicer a ``qt.QTimer`` every ~50 ms), headless
code through ``Job.wait(pump=...)`` (the Logic's waitForCompletion pumps
``slicer.app.processEvents`` while it waits).

Jobs run one at a time, first in first out. Submitting a job with a ``key`` cancels the pending
(not yet started) jobs with that key, so that a burst of click changes becomes one computation
of the latest state. Every job ends with exactly one callback: ``on_done(result)``, or
``on_error(error)``; a cancelled job's error is ``Cancelled``.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from typing import Any, Callable, Literal, Optional

from .errors import Cancelled, VISTA3DError
from .progress import CancelToken, ProgressCallback

__all__ = ["Job", "Worker"]

_log = logging.getLogger(__name__)

#: What a job runs: ``function(progress, cancel)`` returns the job's result.
JobFunction = Callable[[ProgressCallback, CancelToken], Any]


class Job:
    """One submitted function: its cancel flag, and its outcome once it has finished."""

    def __init__(
        self,
        worker: "Worker",
        function: JobFunction,
        name: str,
        key: Optional[str],
        on_progress: Optional[ProgressCallback],
        on_done: Optional[Callable[[Any], None]],
        on_error: Optional[Callable[[BaseException], None]],
    ) -> None:
        self.name = name
        self.key = key
        self._worker = worker
        self._function = function
        self._on_progress = on_progress
        self._on_done = on_done
        self._on_error = on_error
        self._token = CancelToken()
        self._finished = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._latest_progress: Optional[tuple[int, int, str]] = None  # not yet dispatched

    def __repr__(self) -> str:
        return f"<Job {self.name!r}{' done' if self.done else ''}>"

    def cancel(self) -> None:
        """Stop the job: a pending job never starts, a running one stops at its next check.

        A job cancelled while it runs ends as ``Cancelled`` even if its function returns a
        result: the user asked for nothing to change.
        """
        self._token.cancel()
        self._worker._withdraw(self)

    @property
    def done(self) -> bool:
        """Whether the job has finished (returned, raised, or was cancelled)."""
        return self._finished.is_set()

    def result(self) -> Any:
        """The function's return value; raises its exception (``Cancelled`` if it was cancelled).

        Does not wait: call it once ``done`` is true, or use ``wait``.
        """
        if not self.done:
            raise RuntimeError(f"Job {self.name!r} has not finished: use wait() to wait for it.")
        if self._error is not None:
            raise self._error
        return self._result

    def wait(
        self,
        timeout: Optional[float] = None,
        pump: Optional[Callable[[], None]] = None,
        poll_interval: float = 0.05,
    ) -> Any:
        """Wait for the job on the dispatching thread and return its result (or raise its error).

        While waiting, calls ``pump`` (e.g. ``slicer.app.processEvents``, so the GUI repaints)
        and the worker's ``dispatch``, so the job's callbacks, and those queued before them, have
        run when this returns. Raises ``TimeoutError`` after ``timeout`` seconds (the job goes on).
        """
        if threading.get_ident() == self._worker._thread_id:
            raise RuntimeError("Job.wait() on the worker thread would wait for itself forever.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Read before dispatching: the job's last callback is queued before it is marked done,
            # so once this is true the dispatch below runs that callback.
            finished = self.done
            if pump is not None:
                pump()
            self._worker.dispatch()
            if finished:
                return self.result()
            remaining = poll_interval if deadline is None else min(poll_interval, deadline - time.monotonic())
            if remaining <= 0:
                raise TimeoutError(f"Job {self.name!r} did not finish within {timeout} s.")
            self._finished.wait(remaining)


class Worker:
    """Runs submitted jobs one at a time on one daemon thread, started on the first submit."""

    def __init__(self, name: str = "VISTA3D worker") -> None:
        self._name = name
        self._lock = threading.Condition(threading.RLock())  # re-entrant: a withdrawal finishes the job
        self._pending: collections.deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        # Callbacks for the dispatching thread, oldest first: (job, "progress" | "finished").
        self._events: collections.deque[tuple[Job, Literal["progress", "finished"]]] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._thread_id: Optional[int] = None
        self._stopping = False

    def submit(
        self,
        function: JobFunction,
        *,
        name: str,
        key: Optional[str] = None,
        on_progress: Optional[ProgressCallback] = None,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
    ) -> Job:
        """Queue ``function(progress, cancel)``; its callbacks run later, in ``dispatch``.

        ``key``: pending jobs with the same key are cancelled (only the latest state matters).
        ``on_progress`` sees only the latest progress of the job at each dispatch.
        """
        job = Job(self, function, name, key, on_progress, on_done, on_error)
        with self._lock:
            if self._stopping:
                raise RuntimeError("The worker was shut down; it takes no more jobs.")
            if key is not None:
                for replaced in [j for j in self._pending if j.key == key]:
                    replaced.cancel()
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._lock.notify()
        return job

    def run(
        self,
        function: JobFunction,
        *,
        name: str,
        key: Optional[str] = None,
        wait: bool = True,
        pump: Optional[Callable[[], None]] = None,
        progress: Optional[ProgressCallback] = None,
        apply: Optional[Callable[[Any], Any]] = None,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Any:
        """``function(progress, cancel)`` on the worker, then ``apply(result)`` on the dispatching
        thread (where the Slicer Logic writes into the scene); ``apply``'s value is the job's result,
        for ``on_done``. An error of ``apply`` is handled like the job's own (``on_error``).

        With ``wait`` (the Logic's ``waitForCompletion``) it returns that result or raises the
        error, calling ``pump`` while it waits (``slicer.app.processEvents``: Slicer stays
        responsive) and cancelling the job once ``cancel`` is set. Without, it returns the ``Job``.
        """
        outcome: dict = {}

        def done(result: Any) -> None:
            try:
                outcome["value"] = apply(result) if apply is not None else result
            except Exception as error:  # writing the result failed: report it like a failed job
                outcome["error"] = error
                if on_error is not None:
                    on_error(error)
                return
            if on_done is not None:
                on_done(outcome["value"])

        job = self.submit(function, name=name, key=key, on_progress=progress, on_done=done, on_error=on_error)
        if not wait:
            return job

        def pump_and_cancel() -> None:
            if cancel is not None and cancel.cancelled:
                job.cancel()
            if pump is not None:
                pump()

        job.wait(pump=pump_and_cancel)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def dispatch(self) -> int:
        """Run the queued callbacks on this thread, oldest first; return how many ran.

        Runs only what was queued when it was called, so a job reporting progress faster than
        this thread keeps up cannot hold it here. An exception from a callback propagates (the
        callbacks after it stay queued for the next call).
        """
        with self._lock:
            count = len(self._events)
        ran = 0
        for _ in range(count):
            with self._lock:
                job, kind = self._events.popleft()
                if kind == "progress":
                    latest, job._latest_progress = job._latest_progress, None
            if kind == "progress":
                job._on_progress(*latest)
                ran += 1
            elif job._error is None:
                if job._on_done is not None:
                    job._on_done(job._result)
                    ran += 1
            elif job._on_error is not None:
                job._on_error(job._error)
                ran += 1
        return ran

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting to run."""
        with self._lock:
            return self._running is not None or bool(self._pending)

    def cancel_all(self) -> None:
        """Cancel the running job and every pending one."""
        with self._lock:
            jobs = list(self._pending) + ([self._running] if self._running is not None else [])
        for job in jobs:
            job.cancel()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Cancel everything and stop the thread; return whether it stopped within ``timeout``.

        The callbacks of the cancelled jobs stay queued for a last ``dispatch``.
        """
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self.cancel_all()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # -- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping:  # shutdown withdraws (cancels) the pending jobs itself
                    return
                job = self._running = self._pending.popleft()
            try:
                job._token.raise_if_cancelled()  # cancelled as it was taken: never starts
                result = job._function(functools.partial(self._progress, job), job._token)
                job._token.raise_if_cancelled()
            except VISTA3DError as error:
                self._finish(job, None, error)
            except BaseException as error:  # anything: the thread must outlive a broken job
                _log.exception("VISTA3D job %r failed", job.name)
                self._finish(job, None, error)
            else:
                self._finish(job, result, None)
            # The thread waits for the next job holding nothing: a result (a click session, say)
            # kept alive here would keep its network after the panel let it go.
            job = result = None

    def _progress(self, job: Job, done: int, total: int, message: str) -> None:
        if job._on_progress is None:
            return
        with self._lock:
            if job._latest_progress is None:  # else its event is queued and will read the new value
                self._events.append((job, "progress"))
            job._latest_progress = (done, total, message)

    def _finish(self, job: Job, result: Any, error: Optional[BaseException]) -> None:
        with self._lock:
            if self._running is job:
                self._running = None
            job._result, job._error = result, error
            job._function = None  # its closure may hold a whole volume
            self._events.append((job, "finished"))
            job._finished.set()  # after its callback is queued: wait() relies on that order

    def _withdraw(self, job: Job) -> None:
        """Finish ``job`` as cancelled if it has not started."""
        with self._lock:  # submit calls this holding the lock
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, None, Cancelled())
