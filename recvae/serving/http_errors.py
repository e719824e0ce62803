"""What an HTTP client of the server is told when its request fails, and how much of a request is read.

- :class:`RequestError` and :func:`install_error_handlers`: every failure answers ``{"detail": "<one line>"}``
  (404 unknown ids, 422 bad values, 503 overloaded with ``Retry-After``, 501 unsupported, 500 internal),
  never a traceback, at most
  ``MAX_DETAIL_CHARS`` long; ids echoed in it are cut by :func:`recvae.data.ids.short_id`.
- :class:`BodyLimit`: ASGI middleware answering 413 to a body over ``max_body_bytes`` before reading it.
"""

from __future__ import annotations

import logging

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError:  # the optional ``serve`` extra is not installed: recvae.serving.server says so
    HAVE_FASTAPI = False
else:
    HAVE_FASTAPI = True

logger = logging.getLogger("recvae.serving.server")

__all__ = ["RequestError", "Overloaded", "install_error_handlers", "BodyLimit", "DEFAULT_MAX_BODY_BYTES", "MAX_DETAIL_CHARS"]

#: The largest request body read (bytes); a larger one answers 413 unread.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: The longest ``detail`` an error answer carries (ids in it are cut shorter still, see ``short_id``).
MAX_DETAIL_CHARS = 500


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (404 unknown ids, 422 bad values)."""

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class Overloaded(RequestError):
    """The server's scoring queue is full: 503 at once, with ``Retry-After`` (seconds), instead of a wait
    without bound."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, status=503, headers={"Retry-After": str(retry_after_s)})


def _one_line(err: BaseException) -> str:
    """An error as one line of at most ``MAX_DETAIL_CHARS`` (a request's long text never comes back whole)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    line = " ".join(text.split()) or type(err).__name__
    return line if len(line) <= MAX_DETAIL_CHARS else line[: MAX_DETAIL_CHARS - 3] + "..."


def _validation_message(err: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: ``k: Input should be a valid integer; ...``."""
    parts: dict[str, str] = {}
    for error in err.errors():
        if error.get("type") == "json_invalid":  # FastAPI's parse says where (loc), pydantic's in its message
            where = [p for p in error.get("loc", ()) if isinstance(p, int)]
            at = f" at position {where[-1]}" if where else ""
            message = str(error.get("msg", "decode error")).removeprefix("Invalid JSON: ")
            parts["body"] = f"invalid JSON ({message}{at})"
            continue
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        if loc and loc[-1] in _ID_TYPES:  # one error per member of the id union: say it once
            parts.setdefault(".".join(loc[:-1]) or "body", "an id must be a string or a number")
            continue
        parts.setdefault(".".join(loc) or "body", error.get("msg", "invalid"))
    shown = [f"{where}: {what}" for where, what in parts.items()]
    return "; ".join(shown[:5]) + (f"; and {len(shown) - 5} more" if len(shown) > 5 else "")


_ID_TYPES = ("str", "int", "float")


def install_error_handlers(app: FastAPI) -> None:
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=err.status, headers=err.headers)

    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err)}, status_code=422)

    async def unknown_id(_: Request, err: KeyError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=404)

    async def bad_value(_: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=422)

    async def not_supported(_: Request, err: NotImplementedError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=501)

    async def internal(_: Request, err: Exception) -> JSONResponse:
        # The boundary to HTTP clients: the traceback goes to the server's log, one line to the client.
        logger.error("internal error", exc_info=err)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {_one_line(err)}"[:MAX_DETAIL_CHARS]},
                            status_code=500)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(KeyError, unknown_id)  # UnknownIdError
    app.add_exception_handler(ValueError, bad_value)  # RunError
    app.add_exception_handler(NotImplementedError, not_supported)
    app.add_exception_handler(Exception, internal)


# ============================================================================ the body limit
def _too_large_message(limit: int, declared: int | None = None) -> str:
    size = f"{declared:,} bytes" if declared is not None else f"more than {limit:,} bytes"
    return (f"request body of {size}: at most {limit:,} bytes per request; send fewer ids per request "
            "(or start the server with a larger max_body_bytes)")


if HAVE_FASTAPI:
    class _BodyTooLarge(HTTPException):
        """A body that passed the limit while streaming in (FastAPI lets an HTTPException through its body read)."""

        def __init__(self, limit: int) -> None:
            super().__init__(413, _too_large_message(limit), headers={"connection": "close"})


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_body_bytes`` with 413 before it is read.

    A declared ``Content-Length`` over the limit is answered at once (the body is never received,
    and the connection is closed); a body without one (chunked) is counted as it streams in and
    refused as soon as it passes the limit, so at most one chunk past it is ever held.
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = JSONResponse({"detail": _too_large_message(limit, declared)}, status_code=413,
                                    headers={"connection": "close"})
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def watched_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge as err:  # read outside FastAPI's body handling: answer here if nothing was sent
            if started:
                raise
            await JSONResponse({"detail": err.detail}, status_code=413, headers=err.headers)(scope, receive, send)


def _content_length(scope) -> int | None:
    """The request's declared Content-Length, or None (absent or not a number: the server judges those)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
