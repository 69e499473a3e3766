"""Errors in the OpenAI format: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger("aligngpt.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}
INTERNAL_ERROR = 500
SERVICE_UNAVAILABLE = 503
RETRY_AFTER_S = 1  # what a 503 (queue full, shutting down) tells clients to wait before retrying


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI ``code``/``param``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict:
        kind = ERROR_TYPES.get(
            self.status, "server_error" if self.status >= INTERNAL_ERROR else "invalid_request_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.status == SERVICE_UNAVAILABLE:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the app in the OpenAI format; unexpected ones are logged, never sent as tracebacks."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(err.status_code, str(err.detail), code=None).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        return APIError(400, first.get("msg", "invalid request"), "invalid_value", param).response()

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, err: ClientDisconnect) -> JSONResponse:
        # Nobody reads this answer; the point is to log one line instead of a traceback.
        logger.info("%s %s: the client disconnected before sending the whole request", request.method, request.url.path)
        return APIError(
            400, "the client disconnected before sending the whole request", "client_disconnected"
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling %s %s", request.method, request.url.path)
        return APIError(INTERNAL_ERROR, "internal server error", "internal_error").response()
