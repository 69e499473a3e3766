"""The FastAPI app: OpenAI-compatible chat completions (plain and SSE), models, health and the web page.

Every request is checked here (size, JSON, types, model name, image, prompt length) and answered with an OpenAI
error on failure; generation happens on the :class:`BatchScheduler` worker, which batches concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from aligngpt.inference.images import DEFAULT_MAX_BYTES, REQUEST_MAX_PIXELS, ImageError, ImagePolicy, load_image
from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings
from aligngpt.inference.server.errors import APIError, install_error_handlers
from aligngpt.inference.server.scheduler import BatchScheduler, QueueFull
from aligngpt.inference.server.schemas import ChatCompletionRequest, parse_chat_request, to_conversation
from aligngpt.inference.streaming import FINISH_CANCELLED, Alignment, StreamRequest, generate_streams
from aligngpt.processing import Segment

STATIC_DIR = Path(__file__).parent / "static"
MIB = 1024 * 1024
NO_CONTENT = 204
CLIENT_CLOSED_REQUEST = 499  # the client hung up before the answer was ready (nginx's convention)


@dataclass
class ServerConfig:
    """Limits and policies of one server. ``max_prompt_tokens=None`` uses the model's context length."""

    model_name: str = "aligngpt"
    api_key: str | None = None
    allow_dirs: tuple[Path, ...] = ()
    allow_remote_images: bool = False
    max_body_bytes: int = 32 * MIB
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = REQUEST_MAX_PIXELS
    max_prompt_tokens: int | None = None
    max_tokens_limit: int = 1024
    default_max_tokens: int = 512
    default_temperature: float = 0.2
    default_top_p: float = 0.7
    max_queue: int = 64
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    created: int = field(default_factory=lambda: int(time.time()))

    def image_policy(self) -> ImagePolicy:
        return ImagePolicy(
            allow_dirs=tuple(self.allow_dirs),
            allow_remote=self.allow_remote_images,
            max_pixels=self.max_image_pixels,
            max_bytes=self.max_image_bytes,
        )


class _AsyncSink:
    """Moves one row's events from the worker thread into an ``asyncio.Queue`` of the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()

    def _put(self, event: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the client is long gone
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def start(self, alignment: Alignment | None, prompt_tokens: int) -> None:
        self._put(("start", alignment, prompt_tokens))

    def text(self, piece: str) -> None:
        self._put(("text", piece))

    def finish(self, reason: str, completion_tokens: int) -> None:
        self._put(("finish", reason, completion_tokens))

    def error(self, err: Exception) -> None:
        self._put(("error", err))


@dataclass
class _Prepared:
    """A validated request, ready to queue."""

    request: ChatCompletionRequest
    stream_request: StreamRequest
    sink: _AsyncSink
    prompt_tokens: int


class ChatService:
    """Validation, queueing and response building around one pipeline."""

    def __init__(self, pipeline: AlignGPTPipeline, config: ServerConfig, scheduler: BatchScheduler | None = None):
        self.pipeline = pipeline
        self.config = config
        self.policy = config.image_policy()
        # The worker thread uses the pipeline's tokenizer; request threads count tokens with their own copy.
        self.counting_processor = copy.copy(pipeline.processor)
        self.counting_processor.tokenizer = copy.deepcopy(pipeline.processor.tokenizer)
        text_config = pipeline.model.config.text_config
        self.context_length = int(
            getattr(text_config, "max_position_embeddings", None) or pipeline.processor.model_max_length
        )
        self.max_prompt_tokens = config.max_prompt_tokens or min(
            self.context_length, pipeline.processor.model_max_length
        )
        self.cancelled_rows = 0
        self.scheduler = scheduler or BatchScheduler(
            self._run_batch,
            _report_error,
            max_queue=config.max_queue,
            max_batch_size=config.max_batch_size,
            batch_wait_s=config.batch_wait_ms / 1000,
        )

    def _run_batch(self, requests) -> None:
        results = generate_streams(self.pipeline, requests)
        self.cancelled_rows += sum(result.finish_reason == FINISH_CANCELLED for result in results)

    # --- checks ---------------------------------------------------------------------------------------------------
    def check_api_key(self, request: Request) -> None:
        if not self.config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.config.api_key):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", "invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes; the limit is {limit}", "request_too_large")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes", "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def prepare(self, body: bytes) -> _Prepared:
        request = parse_chat_request(body)
        if request.model not in (None, "", self.config.model_name):
            raise APIError(
                404, f"model {request.model!r} does not exist; this server has {self.config.model_name!r}",
                "model_not_found", "model",
            )  # fmt: skip
        conversation = to_conversation(request)
        image = None
        if conversation.image_url is not None:
            try:
                image = await run_in_threadpool(load_image, conversation.image_url, self.policy)
            except ImageError as err:
                raise APIError(err.status, str(err), err.code, "messages") from err
        prompt = conversation.prompt(self.pipeline.template)
        try:
            prompt_tokens = len(self.counting_processor.encode_segments([Segment(prompt)]).input_ids)
        except ValueError as err:
            raise APIError(400, str(err), "invalid_value", "messages") from err
        if prompt_tokens > self.max_prompt_tokens:
            raise APIError(
                400, f"the prompt is {prompt_tokens} tokens (image included); the limit is {self.max_prompt_tokens}",
                "context_length_exceeded", "messages",
            )  # fmt: skip
        default = min(self.config.default_max_tokens, self.config.max_tokens_limit)
        wanted = request.max_completion_tokens or request.max_tokens or default
        if wanted > self.config.max_tokens_limit:
            raise APIError(
                400, f"max_tokens is {wanted}; this server allows at most {self.config.max_tokens_limit}",
                "invalid_value", "max_tokens",
            )  # fmt: skip
        room = max(1, self.context_length - prompt_tokens)
        settings = GenerationSettings(
            max_new_tokens=min(wanted, room),
            temperature=self.config.default_temperature if request.temperature is None else request.temperature,
            top_p=self.config.default_top_p if request.top_p is None else request.top_p,
            stop=tuple(request.stop_list()),
        )
        sink = _AsyncSink(asyncio.get_running_loop())
        return _Prepared(request, StreamRequest(prompt, image, settings, sink), sink, prompt_tokens)

    def submit(self, prepared: _Prepared) -> None:
        try:
            self.scheduler.submit(prepared.stream_request)
        except QueueFull as err:
            raise APIError(503, f"server busy: {err}; retry later", "server_overloaded") from err

    # --- responses ------------------------------------------------------------------------------------------------
    async def complete(self, prepared: _Prepared) -> dict:
        """Wait for the whole answer; an OpenAI ``chat.completion`` object."""
        alignment, pieces = None, []
        prompt_tokens = prepared.prompt_tokens
        while True:
            event = await prepared.sink.events.get()
            if event[0] == "start":
                alignment, prompt_tokens = event[1], event[2]
            elif event[0] == "text":
                pieces.append(event[1])
            elif event[0] == "error":
                raise _as_api_error(event[1])
            else:
                reason, completion_tokens = event[1], event[2]
                break
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces).strip()},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
            "alignment": alignment.as_dict() if alignment else None,
        }

    async def stream(self, prepared: _Prepared) -> AsyncIterator[str]:
        """Server-sent events: role chunk (with the gate weights), text chunks, final chunk, ``[DONE]``."""
        chunk_id, created = _completion_id(), int(time.time())
        include_usage = bool(prepared.request.stream_options and prepared.request.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n"

        finished = False
        try:
            while True:
                event = await prepared.sink.events.get()
                if event[0] == "start":
                    alignment = event[1].as_dict() if event[1] else None
                    yield chunk({"role": "assistant", "content": ""}, alignment=alignment)
                elif event[0] == "text":
                    yield chunk({"content": event[1]})
                elif event[0] == "error":
                    yield f"data: {json.dumps(_as_api_error(event[1]).body())}\n\n"
                    break
                else:
                    _, reason, completion_tokens = event
                    yield chunk({}, reason)
                    if include_usage:
                        usage = _usage(prepared.prompt_tokens, completion_tokens)
                        body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                "model": self.config.model_name, "choices": [], "usage": usage}  # fmt: skip
                        yield f"data: {json.dumps(body)}\n\n"
                    break
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: free its row in the batch
                prepared.stream_request.cancelled.set()


async def _unless_disconnected(request: Request, work: Awaitable[dict]) -> dict | None:
    """The result of ``work``, or ``None`` (``work`` cancelled) when the client disconnects first."""
    answer = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            answer.cancel()
    return answer.result() if answer in done else None


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone (the ASGI server reports ``http.disconnect``; the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _report_error(request: StreamRequest, err: Exception) -> None:
    sink = request.sink
    if isinstance(sink, _AsyncSink):
        sink.error(err)


def _as_api_error(err: Exception) -> APIError:
    if isinstance(err, APIError):
        return err
    if isinstance(err, QueueFull):
        return APIError(503, str(err), "server_overloaded")
    return APIError(500, "generation failed; see the server log", "internal_error")


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_app(
    pipeline: AlignGPTPipeline, config: ServerConfig | None = None, scheduler: BatchScheduler | None = None
) -> FastAPI:
    """The server app. The batching worker starts and stops with the app's lifespan.

    ``scheduler`` replaces the default worker (tests use it to control timing).
    """
    config = config or ServerConfig()
    service = ChatService(pipeline, config, scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.scheduler.stop)

    app = FastAPI(title="aligngpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        service.check_api_key(request)
        prepared = await service.prepare(await service.read_body(request))
        service.submit(prepared)
        if prepared.request.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(service.stream(prepared), media_type="text/event-stream", headers=headers)
        try:
            answer = await _unless_disconnected(request, service.complete(prepared))
        finally:
            prepared.stream_request.cancelled.set()  # no-op when finished; frees the row of an abandoned request
        if answer is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody is there to read it
        return JSONResponse(answer)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        service.check_api_key(request)
        entry = {"id": config.model_name, "object": "model", "created": config.created, "owned_by": "aligngpt"}
        return {"object": "list", "data": [entry]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        service.check_api_key(request)
        if name != config.model_name:
            raise APIError(404, f"model {name!r} does not exist", "model_not_found", "model")
        return {"id": config.model_name, "object": "model", "created": config.created, "owned_by": "aligngpt"}

    @app.get("/health")
    async def health() -> dict:
        scheduler = service.scheduler
        return {
            "status": "ok",
            "model": config.model_name,
            "queued": scheduler.queued,
            "running": scheduler.running,
            "batches_run": scheduler.batches_run,
            "largest_batch": scheduler.largest_batch,
            "cancelled_rows": service.cancelled_rows,
            "max_batch_size": scheduler.max_batch_size,
            "auth_required": bool(config.api_key),
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=NO_CONTENT)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


__all__ = ["ChatService", "ServerConfig", "create_app"]
