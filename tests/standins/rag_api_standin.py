"""A stand-in for the RAG API, on loopback, for the load and measurement tests only.

It answers like the real service (`POST /query` with the agreed schema, `GET /healthz`,
`POST /documents` with an API key, `DELETE /documents/{id}`) but from a table of golden
questions instead of a vector store, so a Locust run against it takes seconds and its answers
are known: right for every question except those listed in `wrong`, which get an answer without
the expected document or facts.

It can be taken down and brought back on the same port (`stop()` / `start()`): the listening
socket closes and open keep-alive connections are cut, so clients see refused and reset
connections, as when a pod dies. `down_since` / `up_since` record when (epoch seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

#: two golden questions the stand-in answers (tests that need no real knowledge base)
SAMPLE_QUESTIONS: list[dict[str, Any]] = [
    {
        "id": "grace",
        "question": "How long is the default grace period?",
        "expected_doc": "pod-termination",
        "facts": ["30 seconds"],
    },
    {
        "id": "probes",
        "question": "What does a readiness probe gate?",
        "expected_doc": "probes",
        "facts": ["endpoints"],
    },
]


def write_golden(path: Path, questions: list[dict[str, Any]], **extra: Any) -> Path:
    """A golden file (the schema of tests/e2e/golden.yaml) the locustfile can read."""
    path.write_text(yaml.safe_dump({"top_k": 3, **extra, "questions": questions}))
    return path


def process_gone(pid: int) -> bool:
    """True when no process `pid` exists any more (Locust and its workers must not linger)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class RagApiStandIn:
    def __init__(
        self,
        questions: Iterable[dict[str, Any]],
        wrong: Iterable[str] = (),
        api_key: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.answers = {str(q["question"]): q for q in questions}
        self.wrong = set(wrong)
        self.api_key = api_key
        self.host = host
        self.port = 0
        self.documents: dict[str, dict[str, Any]] = {}
        self.served = 0
        self.up_since: float | None = None
        self.down_since: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RagApiStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn

            def setup(self) -> None:
                super().setup()
                with standin._lock:
                    standin._connections.add(self.connection)

            def finish(self) -> None:
                with standin._lock:
                    standin._connections.discard(self.connection)
                with contextlib.suppress(OSError):  # the connection was cut by stop()
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: thousands of requests per test

            def _body(self) -> Any:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return json.loads(raw or b"{}")
                except ValueError:
                    return None

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                standin.served += 1

            def do_GET(self) -> None:
                if self.path in ("/healthz", "/readyz"):
                    self._send(200, {"status": "ok", "ready": True})
                else:
                    self._send(404, {"detail": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                if self.path == "/query":
                    self._query(body)
                elif self.path == "/documents":
                    if standin.api_key and self.headers.get("X-API-Key") != standin.api_key:
                        self._send(401, {"detail": "missing or wrong X-API-Key"})
                        return
                    standin.documents[str(body["id"])] = body
                    self._send(201, {"id": body["id"], "chunks": 1})
                else:
                    self._send(404, {"detail": "not found"})

            def do_DELETE(self) -> None:
                doc_id = self.path.removeprefix("/documents/")
                if standin.api_key and self.headers.get("X-API-Key") != standin.api_key:
                    self._send(401, {"detail": "missing or wrong X-API-Key"})
                elif standin.documents.pop(doc_id, None) is None:
                    self._send(404, {"detail": "no such document"})
                else:
                    self._send(200, {"deleted": doc_id})

            def _query(self, body: Any) -> None:
                if not isinstance(body, dict) or not isinstance(body.get("question"), str):
                    self._send(422, {"detail": "question required"})
                    return
                question = body["question"]
                golden = standin.answers.get(question)
                if golden is None or question in standin.wrong:
                    sources = [
                        {"id": "unrelated", "title": "Unrelated", "score": 0.1, "text": "n/a"}
                    ]
                    answer = "I do not know."
                else:
                    facts = ", ".join(golden.get("facts") or [])
                    sources = [
                        {
                            "id": golden["expected_doc"],
                            "title": golden["expected_doc"].title(),
                            "score": 0.9,
                            "text": f"Passage about {golden['expected_doc']}: {facts}.",
                        }
                    ]
                    answer = f"From the passages: {facts}."
                self._send(
                    200,
                    {"answer": answer, "sources": sources, "model": "standin", "degraded": True},
                )

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self.up_since = time.time()
        return self

    def stop(self) -> None:
        """Close the listening socket and cut every open connection: the service is gone."""
        server, self._server = self._server, None
        if server is None:
            return
        # From here on no new request is served (the accept loop ends within its poll
        # interval, open connections are cut just after), so this is when the outage begins.
        self.down_since = time.time()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RagApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
