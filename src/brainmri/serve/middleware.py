"""One pure-ASGI middleware for every request: request id, body-size limit, API key, access log.

Pure ASGI (not ``BaseHTTPMiddleware``) so the body is counted as it streams in: a declared
``Content-Length`` over the limit is refused before a byte is read, a chunked body as soon as it passes
the limit. The access log is one JSON object per line with no file names and no image data.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("brainmri.serve.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PROTECTED_PREFIXES = ("/v1/", "/predict")


def _json_error(status: int, code: str, message: str, rid: str, extra: list | None = None) -> tuple[Message, Message]:
    body = json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(b"x-request-id", rid.encode())] + (extra or [])
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class RequestContextMiddleware:
    """Request id (``X-Request-ID`` echoed or generated), body limit (413), API key (401), access log."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None = None, log: bool = True) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.log = log

    def _early_error(self, scope: Scope, headers: dict[bytes, bytes], rid: str) -> tuple[int, str, str] | None:
        path = scope.get("path", "")
        if self.api_key and path.startswith(PROTECTED_PREFIXES):
            given = headers.get(b"x-api-key", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, "unauthorized", "missing or wrong API key (send it in the X-API-Key header)"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return 400, "bad_request", "Content-Length is not a number"
            if size > self.max_body_bytes:
                return 413, "payload_too_large", self._too_large(size)
        return None

    def _too_large(self, size: int | None = None) -> str:
        what = f"request body of {size:,} bytes" if size is not None else "request body"
        return f"{what} is over the {self.max_body_bytes:,}-byte upload limit"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope["brainmri.request_id"] = rid
        record: dict[str, Any] = {"status": 500, "bytes_in": 0, "bytes_out": 0}
        early = self._early_error(scope, headers, rid)
        if early is not None:
            start_msg, body_msg = _json_error(*early, rid)
            record["status"] = early[0]
            await send(start_msg)
            await send(body_msg)
        else:
            await self.app(scope, self._counting_receive(receive, record), self._tagging_send(send, record, rid))
        if self.log:
            self._log(scope, rid, record, start)

    def _counting_receive(self, receive: Receive, record: dict[str, Any]) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record["bytes_in"] += len(message.get("body", b""))
                if record["bytes_in"] > self.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        return wrapped

    def _tagging_send(self, send: Send, record: dict[str, Any], rid: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                record["bytes_out"] += len(message.get("body", b""))
            await send(message)

        return wrapped

    def _log(self, scope: Scope, rid: str, record: dict[str, Any], start: float) -> None:
        client = scope.get("client")
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": rid,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": record["status"],
            "ms": round((time.perf_counter() - start) * 1000.0, 2),
            "bytes_in": record["bytes_in"],
            "bytes_out": record["bytes_out"],
            "client": client[0] if client else None,
        }
        access_log.info(json.dumps(entry))
