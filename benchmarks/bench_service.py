"""Benchmark of the RAG service: start-to-ready, /query throughput and latency.

Starts `python -m rag_api` on loopback (embedded store in a tmp dir, extractive mode, one
uvicorn process) twice: the first start indexes the knowledge base, the second measures
start-to-ready with the knowledge already indexed. Then it drives POST /query at a fixed
concurrency with async httpx for a bounded number of requests and time, and prints the figures.

    .venv/bin/python benchmarks/bench_service.py [--concurrency 8] [--requests 3000]
        [--rounds 3] [--compare-shipped]

With --rounds N the drive is repeated and medians are printed. --compare-shipped also starts
a second service on the shipped embedding model (RAG_EMBED_MODEL_PATH) beside the default
(prepared) one and alternates rounds between them, so the ratio comes from one run.

The load generator shares the two cores with the service, so what it costs per request is
taken from the service. Two clients drive the same requests (--client, default both, in
alternation): `httpx`, async httpx as a Python user would write it (about 1.3 ms of CPU per
request here), and `raw`, keep-alive HTTP/1.1 written straight on asyncio streams (a fraction
of that), which leaves the service the CPU a load generator on another machine would. Both
check every answer (status 200 and an `answer` in the body).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE_DIR = REPO_ROOT / "system" / "knowledge"
QUESTIONS = [
    "What is the default NodePort range?",
    "How does a readiness probe differ from a liveness probe?",
    "What happens to a pod when it is deleted?",
    "How do I roll back a Deployment?",
    "What is a PodDisruptionBudget for?",
    "Why does a container end up in CrashLoopBackOff?",
    "How does retrieval-augmented generation work?",
    "What does a circuit breaker do?",
]
READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start the service and wait for /readyz; returns the process and seconds to ready."""
    url = f"http://127.0.0.1:{env['RAG_PORT']}/readyz"
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rag_api"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = started + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return process, time.monotonic() - started
            last = response.text
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.02)
    stop_service(process)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"service not ready within {READY_TIMEOUT_S}s; last saw: {last}\n{tail}")


def stop_service(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


Ask = Callable[[int, int], Awaitable[bool]]  # (client, request number) -> answered correctly


def _answered(status: int, body: bytes) -> bool:
    return status == 200 and b'"answer"' in body


async def _measure(concurrency: int, total: int, max_seconds: float, ask: Ask) -> dict[str, float]:
    """Each client asks once to warm up (not counted), then `concurrency` clients ask until
    `total` requests or `max_seconds`; request n asks QUESTIONS[n % len(QUESTIONS)]."""
    await asyncio.gather(*(ask(client, 0) for client in range(concurrency)))
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + max_seconds

    async def worker(client: int) -> None:
        nonlocal issued, errors
        while issued < total and time.monotonic() < deadline:
            number = issued
            issued += 1
            started = time.perf_counter()
            if await ask(client, number):
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in range(concurrency)))
    return _figures(latencies, errors, time.perf_counter() - began)


async def drive(
    base_url: str, concurrency: int, total: int, max_seconds: float
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def ask(_client: int, number: int) -> bool:
            question = QUESTIONS[number % len(QUESTIONS)]
            try:
                response = await client.post("/query", json={"question": question, "top_k": 3})
            except httpx.HTTPError:
                return False
            return _answered(response.status_code, response.content)

        return await _measure(concurrency, total, max_seconds, ask)


def _figures(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    if len(latencies) < 2:
        raise SystemExit(
            f"too few successful requests to measure ({len(latencies)}, {errors} errors)"
        )
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p95_ms": round(quantiles[94] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
    }


def _request_bytes(host: str, port: int, question: str) -> bytes:
    body = json.dumps({"question": question, "top_k": 3}).encode()
    head = (
        f"POST /query HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bool, bool]:
    """One request on an open connection: (answered correctly, connection still usable)."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
    status_line, _, header_block = head.partition(b"\r\n")
    length = -1
    keep_alive = True
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if length < 0:  # no Content-Length (chunked or to-close): not a reply this client reads
        return False, False
    body = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_S)
    return _answered(int(status_line.split(b" ", 2)[1]), body), keep_alive


async def drive_raw(
    base_url: str, concurrency: int, total: int, max_seconds: float
) -> dict[str, float]:
    """The same drive as `drive`, on keep-alive connections written by hand (cheap per call)."""
    host, port_text = base_url.removeprefix("http://").rsplit(":", 1)
    port = int(port_text)
    requests = [_request_bytes(host, port, question) for question in QUESTIONS]
    # one connection per client, kept across requests (and from the warm-up on) like a pool
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [
        None
    ] * concurrency

    async def ask(client: int, number: int) -> bool:
        connection = connections[client]
        try:
            if connection is None:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(host, port), REQUEST_TIMEOUT_S
                )
                connections[client] = connection
            ok, keep_alive = await _exchange(*connection, requests[number % len(requests)])
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            IndexError,
        ):
            ok, keep_alive = False, False
        if not keep_alive and connection is not None:
            connection[1].close()
            connections[client] = None
        return ok

    try:
        return await _measure(concurrency, total, max_seconds, ask)
    finally:
        for connection in connections:
            if connection is not None:
                connection[1].close()


DRIVERS = {"raw": drive_raw, "httpx": drive}


def median_figures(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000, help="at most this many per round")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="at most this per round")
    parser.add_argument("--rounds", type=int, default=1, help="drives per service; medians")
    parser.add_argument(
        "--compare-shipped",
        action="store_true",
        help="also measure the shipped embedding model, rounds alternating, and print ratios",
    )
    parser.add_argument(
        "--client",
        choices=("both", *DRIVERS),
        default="both",
        help="load generator: raw asyncio keep-alive, httpx, or both in alternation",
    )
    parser.add_argument("--knowledge-dir", type=Path, default=KNOWLEDGE_DIR)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not any(args.knowledge_dir.glob("*.md")):
        raise SystemExit(f"no markdown files in {args.knowledge_dir}")
    if not 1 <= args.rounds <= 20 or args.concurrency < 1 or args.requests < 10:
        raise SystemExit("--rounds must be 1-20, --concurrency >= 1, --requests >= 10")

    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
        base_env.update(
            {
                "ORT_DISABLE_TELEMETRY": "1",
                "ANONYMIZED_TELEMETRY": "False",
                "RAG_HOST": "127.0.0.1",
                "RAG_STORE": "embedded",
                "RAG_KNOWLEDGE_DIR": str(args.knowledge_dir),
                "RAG_OLLAMA_HOST": "",
                "RAG_LOG_LEVEL": "warning",  # a log line per request would measure the log
            }
        )
        variants: dict[str, dict[str, str]] = {"default": {}}
        if args.compare_shipped:
            from rag_api.embeddings import shipped_model_path

            variants["shipped"] = {"RAG_EMBED_MODEL_PATH": str(shipped_model_path())}
        services: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        clients = list(DRIVERS) if args.client == "both" else [args.client]
        result: dict[str, object] = {"concurrency": args.concurrency, "rounds": args.rounds}
        try:
            for name, extra in variants.items():
                port = free_port()
                env = {
                    **base_env,
                    **extra,
                    "RAG_PORT": str(port),
                    "RAG_CHROMA_PATH": str(Path(tmp) / name / "chroma"),
                }
                log_path = Path(tmp) / f"{name}.log"
                first, first_ready_s = start_service(env, log_path)  # indexes the knowledge
                stop_service(first)
                process, ready_s = start_service(env, log_path)
                services[name] = (process, port)
                checks = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["checks"]
                result[name] = {
                    "embedding_model_file": checks.get("embedding_model_file", "?"),
                    "chunks": checks["chunks"],
                    "first_start_with_indexing_s": round(first_ready_s, 2),
                    "start_to_ready_s": round(ready_s, 2),
                }
            rounds: dict[tuple[str, str], list[dict[str, float]]] = {
                (name, client): [] for name in services for client in clients
            }
            for _ in range(args.rounds):
                # alternating services and clients: drift in the machine's speed hits them all
                for (name, client), figures in rounds.items():
                    port = services[name][1]
                    figures.append(
                        asyncio.run(
                            DRIVERS[client](
                                f"http://127.0.0.1:{port}",
                                args.concurrency,
                                args.requests,
                                args.max_seconds,
                            )
                        )
                    )
        finally:
            for process, _ in services.values():
                stop_service(process)

    medians = {key: median_figures(drives) for key, drives in rounds.items()}
    for (name, client), median in medians.items():
        result[name][f"{client}_client"] = median  # type: ignore[index]
    for client in clients:
        if "shipped" in services:
            default, shipped = medians[("default", client)], medians[("shipped", client)]
            result[f"ratio_rps_default_over_shipped_{client}"] = round(
                default["rps"] / shipped["rps"], 2
            )
            result[f"ratio_p95_default_over_shipped_{client}"] = round(
                default["p95_ms"] / shipped["p95_ms"], 2
            )
    if len(clients) == 2:
        result["ratio_rps_raw_over_httpx_client"] = round(
            medians[("default", "raw")]["rps"] / medians[("default", "httpx")]["rps"], 2
        )
    if args.json:
        print(json.dumps(result))
    else:
        _print_nested(result)
        ready_s = result["default"]["start_to_ready_s"]  # type: ignore[index]
        for client in clients:
            default = medians[("default", client)]
            print(
                f"targets (default service, {client} client, medians): "
                f">= 200 rps {'met' if default['rps'] >= 200 else 'MISSED'}, "
                f"p95 < 50 ms {'met' if default['p95_ms'] < 50 else 'MISSED'}, "
                f"start-to-ready < 2 s {'met' if ready_s < 2 else 'MISSED'}"
            )
    return 0


def _print_nested(value: object, indent: int = 0) -> None:
    assert isinstance(value, dict)
    for key, inner in value.items():
        if isinstance(inner, dict):
            print(f"{' ' * indent}{key}:")
            _print_nested(inner, indent + 2)
        else:
            print(f"{' ' * indent}{key:>30}: {inner}")


if __name__ == "__main__":
    sys.exit(main())
