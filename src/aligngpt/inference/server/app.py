"""The FastAPI app: routes, the API key and the body limit; each step of a chat request is its own module.

A chat request is read (size-capped), validated (:mod:`.validation`), its image fetched (:mod:`.image_fetch`), its
tokens counted and capped (:mod:`.budget`), queued for the batching worker (:mod:`.dispatch`) and answered in the
OpenAI format, whole or streamed (:mod:`.encoding`). Every failure is an OpenAI error (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from aligngpt.inference.pipeline import AlignGPTPipeline
from aligngpt.inference.server import encoding
from aligngpt.inference.server.budget import TokenBudget
from aligngpt.inference.server.config import ServerConfig
from aligngpt.inference.server.dispatch import Dispatcher
from aligngpt.inference.server.errors import APIError, install_error_handlers
from aligngpt.inference.server.image_fetch import fetch_image
from aligngpt.inference.server.scheduler import BatchScheduler
from aligngpt.inference.server.validation import validate_chat

STATIC_DIR = Path(__file__).parent / "static"
NO_CONTENT = 204
CLIENT_CLOSED_REQUEST = 499  # the client hung up before the answer was ready (nginx's convention)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_api_key(request: Request, api_key: str | None) -> None:
    """Without a configured key every request passes; with one, ``Authorization: Bearer <key>`` is required."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", "invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as its declared or received size passes ``limit`` bytes."""
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


def create_app(
    pipeline: AlignGPTPipeline, config: ServerConfig | None = None, scheduler: BatchScheduler | None = None
) -> FastAPI:
    """The server app. The batching worker starts and stops with the app's lifespan.

    ``scheduler`` replaces the default worker (tests use it to control timing).
    """
    config = config or ServerConfig()
    policy = config.image_policy()
    budget = TokenBudget.for_pipeline(pipeline, config)
    dispatcher = Dispatcher(pipeline, config, scheduler)
    model_entry = {"id": config.model_name, "object": "model", "created": config.created, "owned_by": "aligngpt"}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        dispatcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(dispatcher.stop)

    app = FastAPI(title="aligngpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_api_key(request, config.api_key)
        chat = validate_chat(await read_body(request, config.max_body_bytes), config)
        image = await fetch_image(chat.conversation.image_url, policy)
        prompt = chat.conversation.prompt(pipeline.template)
        prompt_tokens = budget.count(prompt)
        job = dispatcher.submit(prompt, image, budget.settings(chat, prompt_tokens), prompt_tokens)
        if chat.stream:
            answer = encoding.stream(job, config.model_name, chat.include_usage)
            return StreamingResponse(answer, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            answer = await _unless_disconnected(request, encoding.collect(job, config.model_name))
        finally:
            job.cancel()  # no-op when finished; frees the row of an abandoned request
        if answer is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody is there to read it
        return JSONResponse(answer)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_api_key(request, config.api_key)
        return {"object": "list", "data": [model_entry]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        check_api_key(request, config.api_key)
        if name != config.model_name:
            raise APIError(404, f"model {name!r} does not exist", "model_not_found", "model")
        return model_entry

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": config.model_name,
            **dispatcher.counts(),
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


__all__ = ["ServerConfig", "create_app"]
