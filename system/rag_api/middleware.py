"""One pure-ASGI middleware for every request: request id, body limit, metrics, a log line.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path of every query.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_api.lifecycle import draining
from rag_api.metrics import ServiceMetrics

log = logging.getLogger("rag_api.access")
REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_UNMATCHED_ROUTE = "<unmatched>"  # one label for every 404 path, so metrics stay bounded


class TooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, served_by: str = ""
    ) -> None:
        self.app = app
        # which replica answered: lets a client behind a Service tell the pods apart
        self.served_by = served_by.encode("latin-1", "replace")
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        if not request_id:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        status = 500
        self.metrics.in_flight.inc()
        try:
            if content_length is not None and content_length > self.max_body_bytes:
                status = 413
                await _send_json(send, 413, self._too_large_message(content_length), request_id)
                return
            if content_length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # a chunked body has no length up front: read it here, within the limit
                try:
                    receive = await self._buffered(receive)
                except TooLarge:
                    status = 413
                    await _send_json(send, 413, self._too_large_message(None), request_id)
                    return

            header_id = request_id.encode()

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", header_id),
                        (b"x-served-by", self.served_by),
                    ]
                    if draining.is_set():
                        # shutting down: ask the client to reconnect (to a ready pod)
                        message["headers"].append((b"connection", b"close"))
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or _UNMATCHED_ROUTE
            method = scope["method"]
            status_label = str(status)
            self.metrics.requests.labels(route_path, method, status_label).inc()
            self.metrics.request_latency.labels(route_path, method, status_label).observe(elapsed)
            log.info(
                "request",
                extra={
                    "route": route_path,
                    "path": scope["path"],
                    "method": method,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                },
            )

    def _too_large_message(self, size: int | None) -> dict[str, Any]:
        got = f"{size} bytes" if size is not None else "more"
        return {
            "detail": f"request body too large: {got}, the limit is {self.max_body_bytes} bytes "
            "(RAG_MAX_DOCUMENT_BYTES sets it)"
        }

    async def _buffered(self, receive: Receive) -> Receive:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
