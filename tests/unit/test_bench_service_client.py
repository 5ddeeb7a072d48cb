"""The service benchmark's hand-written load client, against a real HTTP server on loopback.

The benchmark's figures are only as good as its client's bookkeeping: a wrong status, a body
without an answer, a connection the server closes and a server that stops answering must each
count as what they are.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_service.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_service_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class ScriptedServer:
    """Answers POST /query on keep-alive connections; `script(n)` decides answer number n."""

    def __init__(self, script: object) -> None:
        self.script = script
        self.answered = 0
        self.connections = 0
        self.questions: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                self.questions.append(body["question"])
                status, payload, close = self.script(self.answered)  # type: ignore[operator]
                self.answered += 1
                data = json.dumps(payload).encode()
                lines = [f"HTTP/1.1 {status} X"]
                if close != "unframed":  # "unframed": no Content-Length, the body ends at close
                    lines.append(f"Content-Length: {len(data)}")
                if close:
                    lines.append("Connection: close")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def drive_against(bench: ModuleType, server: ScriptedServer, total: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            figures: dict[str, float] = await bench.drive_raw(
                f"http://127.0.0.1:{port}", concurrency=2, total=total, max_seconds=10
            )
        return figures

    return asyncio.run(main())


def test_every_answer_counts_and_failures_are_told_apart(bench: ModuleType) -> None:
    def script(n: int) -> tuple[int, dict[str, object], bool]:
        if n < 2:  # the warm-up requests, one per client
            return 200, {"answer": "warm"}, False
        if n % 10 == 3:
            return 503, {"detail": "store unavailable"}, False
        if n % 10 == 7:
            return 200, {"detail": "no answer key"}, False
        return 200, {"answer": "ok", "sources": []}, n % 10 == 5

    server = ScriptedServer(script)
    figures = drive_against(bench, server, total=100)
    assert figures["requests"] == 100
    assert figures["errors"] == 20  # the 503s and the 200s without an answer
    assert server.answered == 102  # the warm-up is not counted in the figures
    # every `Connection: close` made the client reconnect: 2 connections plus one per close
    assert server.connections == 2 + 10
    assert set(server.questions) == set(bench.QUESTIONS)
    assert figures["p50_ms"] > 0 and figures["p95_ms"] >= figures["p50_ms"]


def test_a_server_that_stops_answering_ends_in_a_clear_exit(bench: ModuleType) -> None:
    def script(n: int) -> tuple[int, dict[str, object], bool]:
        return 500, {"detail": "broken"}, True

    with pytest.raises(SystemExit, match="too few successful requests"):
        drive_against(bench, ScriptedServer(script), total=20)


def test_a_reply_without_content_length_is_an_error_and_the_client_reconnects(
    bench: ModuleType,
) -> None:
    def script(n: int) -> tuple[int, dict[str, object], bool | str]:
        if n % 5 == 3:  # the last one (n 48 of 0..51) leaves requests to reconnect for
            return 200, {"answer": "unframed"}, "unframed"
        return 200, {"answer": "ok"}, False

    server = ScriptedServer(script)
    figures = drive_against(bench, server, total=50)
    assert figures["requests"] == 50
    assert figures["errors"] == 10
    assert server.connections == 2 + 10
