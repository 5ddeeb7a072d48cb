"""Every error answer is JSON `{"detail": "<message>"}`; never a bare 500 for a known cause."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag_api.service import NotReady
from rag_api.store import StoreUnavailable

log = logging.getLogger("rag_api.errors")


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", "invalid"))
    return f"{location}: {message}" if location else message


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        context = errors[0].get("ctx", {}).get("error", "")
        return JSONResponse(
            {"detail": f"malformed JSON body: {context}".rstrip(": ")}, status_code=400
        )
    messages = [_describe(error) for error in errors]
    # pydantic's error entries may hold the offending input (bytes, huge strings): keep it out
    safe_errors = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg")),
            "type": e.get("type"),
        }
        for e in errors
    ]
    return JSONResponse(
        {"detail": "invalid request: " + "; ".join(messages), "errors": safe_errors},
        status_code=422,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(exc.__cause__, UnicodeDecodeError):
        detail = "request body is not valid UTF-8"
    elif isinstance(exc.__cause__, (ValueError, json.JSONDecodeError)) and exc.status_code == 400:
        detail = f"request body could not be parsed: {exc.__cause__}"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"service is starting: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )


async def _value_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"invalid input: {exc}"}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(NotReady, _not_ready)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(Exception, _unexpected)
