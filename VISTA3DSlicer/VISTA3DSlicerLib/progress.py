"""Progress reporting and cancellation shared by every long operation.

The engine, the downloader and the batch runner all take a ``progress`` callback and a
``CancelToken``; the command line turns them into tqdm bars, the Slicer panel into a
progress bar and a Cancel button.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

#: ``progress(done, total, message)``: ``done`` of ``total`` steps are finished.
ProgressCallback = Callable[[int, int, str], None]


class CancelToken:
    """A thread-safe flag the caller sets and long loops check between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(progress: Optional[ProgressCallback], done: int, total: int, message: str) -> None:
    """Call ``progress`` if there is one (saves every caller the ``None`` check)."""
    if progress is not None:
        progress(done, total, message)


def check_cancelled(cancel: Optional[CancelToken]) -> None:
    """Raise ``Cancelled`` if there is a token and it was cancelled (the points where a run may stop)."""
    if cancel is not None:
        cancel.raise_if_cancelled()
