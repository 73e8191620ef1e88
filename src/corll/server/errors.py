"""Refusals in OpenAI's error shape, for the official client: JSON errors, stream error events, the
request body's size limit, and the exceptions routes raise for the app's handlers to answer."""

from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 256 * 1024


def error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
          code: str | None = None) -> JSONResponse:
    """OpenAI's error shape: the official client reads `message`, `type`, `param` and `code` from it."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """The first problem, naming its field (never echoing the input, which may not even be encodable)."""
    first = exc.errors()[0]
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return error(400, "the request body is not valid JSON", code="invalid_json")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    param = ".".join(where) or None
    return error(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def error_event(status: int, message: str, kind: str) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'param': None, 'code': str(status)}})}\n\n"



class Unauthorized(Exception):
    """No API key, or one the store does not know: 401."""


class ModelNotFound(Exception):
    """A model name the caller may not use: 404 (the same as a name that does not exist)."""


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error(413, f"request body over {self.limit} bytes", "request_too_large")(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await error(413, f"request body over {self.limit} bytes", "request_too_large")(scope, receive, send)
