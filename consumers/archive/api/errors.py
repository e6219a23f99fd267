"""JSON errors, always: ``{"error": code, "message": text}``; never a stack trace.

Validation failures list the offending fields (``problems``) without echoing
the input back. Anything unexpected is logged with a request id and answered
500 with only that id; a catalogue database that is away answers 503 with
Retry-After.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from consumers.archive.db import is_unavailable
from core.errors import DownlinkError

log = logging.getLogger(__name__)

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 411: "length_required", 413: "too_large",
         415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "invalid",
         503: "unavailable"}


class ApiError(StarletteHTTPException):
    """An error answered as is: status, message and optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)


def body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": CODES.get(status, "error"), "message": message, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else CODES.get(exc.status_code, "error")
        return JSONResponse(body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                    for e in exc.errors()]
        return JSONResponse(body(422, "the request does not match the API: see problems",
                                 problems=problems), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_unavailable(exc) or _kafka_error(exc) or (isinstance(exc, DownlinkError) and exc.retriable):
            log.warning("archive API dependency unavailable", extra={"path": request.url.path,
                                                                    "error": repr(exc)})
            return JSONResponse(body(503, "the archive is temporarily unavailable; retry shortly"),
                                status_code=503, headers={"Retry-After": "5"})
        request_id = uuid.uuid4().hex[:12]
        log.error("archive API internal error", extra={"request_id": request_id,
                                                       "path": request.url.path}, exc_info=exc)
        return JSONResponse(body(500, f"internal error (request id {request_id}); "
                                      "the server log has the details", request_id=request_id),
                            status_code=500)


def _kafka_error(exc: BaseException) -> bool:
    """Kafka away or slow (sending a reprocess request): a retriable condition, 503."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, KafkaError)
