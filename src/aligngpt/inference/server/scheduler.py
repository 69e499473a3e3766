"""A bounded request queue and one worker thread that batches compatible requests into one ``generate``.

Requests wait at most ``batch_wait_s`` for companions; the worker then takes up to ``max_batch_size`` waiting
requests that share sampling settings (oldest first) and runs them together. A full queue refuses new requests
(:class:`QueueFull`) instead of growing without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from aligngpt.inference.streaming import StreamRequest, sampling_key

logger = logging.getLogger("aligngpt.serve")

BatchRunner = Callable[[Sequence[StreamRequest]], object]


class QueueFull(RuntimeError):
    """The waiting queue is at its limit."""


class BatchScheduler:
    """Queues :class:`StreamRequest` objects and runs them in batches on a worker thread.

    ``run_batch`` is called with requests that share a :func:`sampling_key`; if it raises, every request of that
    batch gets ``on_error`` (the worker keeps going).
    """

    def __init__(
        self,
        run_batch: BatchRunner,
        on_error: Callable[[StreamRequest, Exception], None],
        max_queue: int = 64,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.01,
    ):
        if max_queue < 1 or max_batch_size < 1:
            raise ValueError("max_queue and max_batch_size must be at least 1")
        self.run_batch = run_batch
        self.on_error = on_error
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._waiting: deque[StreamRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.largest_batch = 0
        self.running = 0

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="aligngpt-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            left, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for request in left:
            self.on_error(request, QueueFull("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- submission ----------------------------------------------------------------------------------------------
    def submit(self, request: StreamRequest) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:  # requests whose clients have gone give their slots back
                self._waiting = deque(request for request in self._waiting if not request.cancelled.is_set())
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (limit {self.max_queue})")
            self._waiting.append(request)
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    # --- worker --------------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[StreamRequest] | None:
        """Block until requests wait, give companions ``batch_wait_s`` to arrive, then take one compatible batch."""
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._waiting) < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            live = [request for request in self._waiting if not request.cancelled.is_set()]
            dropped = [request for request in self._waiting if request.cancelled.is_set()]
            if not live:
                self._waiting.clear()
                return []
            key = sampling_key(live[0].settings)
            batch = [request for request in live if sampling_key(request.settings) == key][: self.max_batch_size]
            chosen = {id(request) for request in batch} | {id(request) for request in dropped}
            self._waiting = deque(request for request in self._waiting if id(request) not in chosen)
            self.running = len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self.run_batch(batch)
            except Exception as err:  # a failed batch must not stop the server
                logger.exception("generation failed for a batch of %d", len(batch))
                for request in batch:
                    self.on_error(request, err)
            finally:
                self.batches_run += 1
                self.largest_batch = max(self.largest_batch, len(batch))
                self.running = 0
