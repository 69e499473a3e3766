"""Between the request handlers (one asyncio loop) and the batching worker (a thread): jobs, their events, the 503.

:meth:`Dispatcher.submit` queues one :class:`Job` on the :class:`BatchScheduler`; the worker reports the job's
progress through an :class:`EventSink` as typed events (:class:`Started`, then :class:`Text` pieces, then
:class:`Finished`, or :class:`Failed`) that the handler awaits with :meth:`Job.next_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings
from aligngpt.inference.server.config import ServerConfig
from aligngpt.inference.server.errors import INTERNAL_ERROR, SERVICE_UNAVAILABLE, APIError
from aligngpt.inference.server.scheduler import BatchScheduler, QueueFull
from aligngpt.inference.streaming import FINISH_CANCELLED, Alignment, StreamRequest, generate_streams

MS_PER_S = 1000


@dataclass(frozen=True)
class Started:
    """Prefill ran: the gate's decision (``None`` without an image) and the prompt's length in positions."""

    alignment: Alignment | None
    prompt_tokens: int


@dataclass(frozen=True)
class Text:
    piece: str


@dataclass(frozen=True)
class Finished:
    reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Started | Text | Finished | Failed


def client_error(err: Exception) -> APIError:
    """What the client of a failed job is told: a 503 while shutting down, else a 500 (the log has the traceback)."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, QueueFull):
        return APIError(SERVICE_UNAVAILABLE, str(err), "server_overloaded")
    return APIError(INTERNAL_ERROR, "generation failed; see the server log", "internal_error")


class EventSink:
    """A :class:`StreamSink` that moves one row's events from the worker thread into its loop's ``asyncio.Queue``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()

    def _put(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the client is long gone
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def start(self, alignment: Alignment | None, prompt_tokens: int) -> None:
        self._put(Started(alignment, prompt_tokens))

    def text(self, piece: str) -> None:
        self._put(Text(piece))

    def finish(self, reason: str, completion_tokens: int) -> None:
        self._put(Finished(reason, completion_tokens))

    def fail(self, err: Exception) -> None:
        self._put(Failed(client_error(err)))


def report_error(request: StreamRequest, err: Exception) -> None:
    """The scheduler's ``on_error``: the job's handler gets a :class:`Failed` event."""
    if isinstance(request.sink, EventSink):
        request.sink.fail(err)


@dataclass
class Job:
    """One queued request. ``prompt_tokens`` is the handler's count (:class:`TokenBudget`), known before prefill."""

    stream_request: StreamRequest
    sink: EventSink
    prompt_tokens: int

    async def next_event(self) -> Event:
        return await self.sink.events.get()

    def cancel(self) -> None:
        """Free the job's row (or its queue slot); a no-op once it has finished."""
        self.stream_request.cancelled.set()


class Dispatcher:
    """Queues jobs on a :class:`BatchScheduler` whose worker runs them with :func:`generate_streams`.

    ``scheduler`` replaces the default worker (tests use one that controls timing; give it :func:`report_error`).
    """

    def __init__(self, pipeline: AlignGPTPipeline, config: ServerConfig, scheduler: BatchScheduler | None = None):
        self.pipeline = pipeline
        self.cancelled_rows = 0
        self.scheduler = scheduler or BatchScheduler(
            self._run_batch,
            report_error,
            max_queue=config.max_queue,
            max_batch_size=config.max_batch_size,
            batch_wait_s=config.batch_wait_ms / MS_PER_S,
        )

    def _run_batch(self, requests: Sequence[StreamRequest]) -> None:
        results = generate_streams(self.pipeline, requests)
        self.cancelled_rows += sum(result.finish_reason == FINISH_CANCELLED for result in results)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        """Stop the worker; jobs still waiting fail with a 503."""
        self.scheduler.stop()

    def submit(self, prompt: str, image: Image.Image | None, settings: GenerationSettings, prompt_tokens: int) -> Job:
        """Queue one job (call from the event loop that awaits it); a full queue is a 503 ``server_overloaded``."""
        sink = EventSink(asyncio.get_running_loop())
        job = Job(StreamRequest(prompt, image, settings, sink), sink, prompt_tokens)
        try:
            self.scheduler.submit(job.stream_request)
        except QueueFull as err:
            raise APIError(SERVICE_UNAVAILABLE, f"server busy: {err}; retry later", "server_overloaded") from err
        return job

    def counts(self) -> dict:
        """The worker's state for ``/health``: queued and running rows, batches run, the largest, rows cancelled."""
        scheduler = self.scheduler
        return {
            "queued": scheduler.queued,
            "running": scheduler.running,
            "batches_run": scheduler.batches_run,
            "largest_batch": scheduler.largest_batch,
            "cancelled_rows": self.cancelled_rows,
            "max_batch_size": scheduler.max_batch_size,
        }
