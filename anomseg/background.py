"""An ordered background worker: host-side bookkeeping overlapped with the next forward pass.

Evaluation hands each image's measured metrics (on CUDA: still being copied to the host, with the event
behind them) to a :class:`Background` worker that waits for them and records them (metric records,
histograms, overlay caches, state files) while the main thread already runs the backbone on the next image;
bank extraction hands it the HDF5 writes. Items are processed one at a time in the order given,
so results are the same as doing the work inline; an error in the worker is raised again in the
caller at the next :meth:`put` or at :meth:`drain`. With ``threaded=False`` the work is done inline
in :meth:`put` (the choice where no core is spare: on a 2-core CPU run a second thread only takes
cycles from the backbone).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


class Background:
    """Run ``fn(item)`` for each :meth:`put` item in a thread, in order, at most ``depth`` items queued.

    Use as a context manager, or call :meth:`close`; :meth:`drain` waits until every item given so far
    has been processed.
    """

    def __init__(self, fn: Callable, depth: int = 2, name: str = "anomseg-background", threaded: bool = True):
        self.fn = fn
        self.threaded = threaded
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if threaded:
            self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self.fn(item)
            except BaseException as exc:  # handed to the caller
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item) -> None:
        self._raise()
        if self.threaded:
            self._queue.put(item)
        else:
            self.fn(item)

    def drain(self) -> None:
        if self.threaded:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        try:
            if exc_type is None:
                self.drain()
        finally:
            self.close()


_STOP = object()
