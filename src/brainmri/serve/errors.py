"""Structured errors: every 4xx/5xx answers ``{"error": {"code", "message", "request_id"}}``.

``ApiError`` is raised by the service code; the handlers here also turn FastAPI's validation errors,
Starlette's HTTP errors and unexpected exceptions into the same shape, so clients parse one format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from brainmri.errors import ImageReadError

log = logging.getLogger("brainmri.serve")

# reader error kind -> (HTTP status, error code)
_IMAGE_ERRORS: dict[str, tuple[int, str]] = {
    "empty": (400, "empty_file"),
    "truncated": (422, "truncated_image"),
    "too_large": (413, "image_too_large"),
    "unreadable": (422, "unreadable_image"),
    "degenerate": (422, "degenerate_image"),  # decodes but holds no usable picture (blank, a strip, ...)
}

_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as is: HTTP ``status``, a stable ``code`` and a one-line ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    @classmethod
    def from_image_error(cls, exc: ImageReadError) -> ApiError:
        status, code = _IMAGE_ERRORS.get(exc.kind, (422, "unreadable_image"))
        return cls(status, code, str(exc))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("brainmri.request_id", ""))


def error_response(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id_of(request)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "header")]
        where = ".".join(loc) or "request"
        if "Expected UploadFile" in str(e.get("msg", "")):
            parts.append(f"field '{where}' must be a file upload (a multipart part with a filename), not a text value")
        elif e.get("type") == "missing":
            parts.append(f"missing field '{where}' (send the image as multipart/form-data field '{where}')")
        else:
            parts.append(f"{where}: {e.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error response the structured shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_request", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            what = "no such endpoint" if exc.status_code == 404 else "method not allowed on"
            message = f"{what}: {request.method} {request.url.path} (the API is described at /docs)"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body is not valid multipart/form-data (send the image in field 'file')"
        return error_response(request, exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request)
        log.exception("unhandled error in request %s", rid)
        message = f"internal error ({type(exc).__name__}); quote request id {rid} when reporting it"
        return error_response(request, 500, "internal_error", message)
