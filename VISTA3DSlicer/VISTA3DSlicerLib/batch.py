"""The batch queue shared by the Slicer panel (every loaded volume) and ``vista3d batch FOLDER``.

``run_batch`` processes items in order and records one ``BatchResult`` per item. It is built
for a night's unattended run: a case that fails is recorded and the batch goes on, and only
cancelling stops it early (the rest are then "not run").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence, TypeVar

from .errors import Cancelled, VISTA3DError
from .progress import CancelToken, ProgressCallback, report

__all__ = ["BatchStatus", "BatchResult", "BatchReport", "run_batch"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

BatchStatus = Literal["done", "skipped", "failed", "not run"]
#: The order the summary lists the statuses in.
_STATUSES: tuple[BatchStatus, ...] = ("done", "skipped", "failed", "not run")


@dataclass
class BatchResult:
    """What became of one item: its status, a message (why skipped, why failed) and its time."""

    name: str
    status: BatchStatus
    message: str = ""
    seconds: float = 0.0


@dataclass
class BatchReport:
    """One result per item, in the order of the items."""

    results: list[BatchResult] = field(default_factory=list)

    def with_status(self, status: BatchStatus) -> list[BatchResult]:
        """The results with ``status``, in order."""
        return [result for result in self.results if result.status == status]

    @property
    def cancelled(self) -> bool:
        """Whether the batch was stopped before its end."""
        return bool(self.with_status("not run"))

    def summary(self) -> str:
        """One line such as "3 done, 1 failed (case_b: <message>), 1 not run (cancelled)"."""
        parts = []
        for status in _STATUSES:
            results = self.with_status(status)
            if not results:
                continue
            part = f"{len(results)} {status}"
            if status == "failed":
                part += " (" + "; ".join(f"{r.name}: {r.message}" for r in results) + ")"
            elif status == "not run":
                part += " (cancelled)"
            parts.append(part)
        return ", ".join(parts) or "nothing to do"


def run_batch(
    items: Sequence[T],
    process: Callable[[T, ProgressCallback, CancelToken], Optional[str]],
    *,
    name: Callable[[T], str],
    should_skip: Optional[Callable[[T], Optional[str]]] = None,
    on_result: Optional[Callable[[BatchResult], None]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> BatchReport:
    """Run ``process(item, progress, cancel)`` on each item in order; report what became of each.

    - ``process`` returns an optional note for the item's message, or raises. A ``VISTA3DError``
      marks the item failed with its message; any other exception marks it failed as
      "TypeName: message" and is logged with its traceback (at debug level: the report carries
      the message). Either way the batch goes on.
    - ``should_skip(item)`` returns why to skip the item (e.g. its output exists), or None.
    - ``Cancelled`` from ``process``, or ``cancel`` set, stops the batch: the item being
      processed and the rest are "not run" (an item that finished before stays "done").
    - ``progress`` gets each item's progress with the message prefixed by the item's position
      and name ("[2/5] case_b: window 3 of 8"), and ``(0, 0, "[2/5] case_b")`` as it starts.
    - ``on_result`` is called with each result as it is recorded (e.g. to advance a bar).
    """
    cancel = cancel if cancel is not None else CancelToken()
    batch = BatchReport()

    def record(result: BatchResult) -> None:
        batch.results.append(result)
        if on_result is not None:
            on_result(result)

    for position, item in enumerate(items, start=1):
        item_name = name(item)
        if cancel.cancelled:
            record(BatchResult(item_name, "not run", "cancelled"))
            continue
        started = time.perf_counter()
        prefix = f"[{position}/{len(items)}] {item_name}"

        def item_progress(done: int, total: int, message: str, prefix: str = prefix) -> None:
            report(progress, done, total, f"{prefix}: {message}" if message else prefix)

        reason = should_skip(item) if should_skip is not None else None
        if reason is not None:
            record(BatchResult(item_name, "skipped", reason, time.perf_counter() - started))
            continue
        report(progress, 0, 0, prefix)
        try:
            note = process(item, item_progress, cancel)
        except Cancelled:
            cancel.cancel()  # the rest are not run either
            record(BatchResult(item_name, "not run", "cancelled", time.perf_counter() - started))
        except VISTA3DError as error:
            record(BatchResult(item_name, "failed", str(error), time.perf_counter() - started))
        except Exception as error:  # one broken case must not stop a night's batch; it is reported
            _log.debug("batch item %s failed", item_name, exc_info=True)
            record(BatchResult(item_name, "failed", f"{type(error).__name__}: {error}", time.perf_counter() - started))
        else:
            record(BatchResult(item_name, "done", note or "", time.perf_counter() - started))
    return batch
