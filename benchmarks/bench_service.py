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


async def drive(
    base_url: str, concurrency: int, total: int, max_seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:

        async def worker() -> None:
            nonlocal issued, errors
            while issued < total and time.monotonic() < deadline:
                question = QUESTIONS[issued % len(QUESTIONS)]
                issued += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/query", json={"question": question, "top_k": 3})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        for _ in range(concurrency):  # warm-up: connections open, caches warm
            await client.post("/query", json={"question": QUESTIONS[0]})
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
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
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in services}
            for _ in range(args.rounds):
                for name, (_, port) in services.items():  # alternating: same noise for both
                    rounds[name].append(
                        asyncio.run(
                            drive(
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

    for name, figures in rounds.items():
        result[name] = {**result[name], **median_figures(figures)}  # type: ignore[dict-item]
    default: dict[str, float] = result["default"]  # type: ignore[assignment]
    if "shipped" in result:
        shipped: dict[str, float] = result["shipped"]  # type: ignore[assignment]
        result["ratio_rps_default_over_shipped"] = round(default["rps"] / shipped["rps"], 2)
        result["ratio_p95_default_over_shipped"] = round(default["p95_ms"] / shipped["p95_ms"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for inner, figure in value.items():
                    print(f"  {inner:>28}: {figure}")
            else:
                print(f"{key}: {value}")
        print(
            f"targets (default service, medians): "
            f">= 200 rps {'met' if default['rps'] >= 200 else 'MISSED'}, "
            f"p95 < 50 ms {'met' if default['p95_ms'] < 50 else 'MISSED'}, "
            f"start-to-ready < 2 s {'met' if default['start_to_ready_s'] < 2 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
