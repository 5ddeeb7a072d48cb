"""Real processes for the service's API tests: `python -m rag_api` and `chroma run`, on loopback.

Every wait is bounded and every timeout says what it waited for and what it saw (the last
lines of the process's log).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from rag_api.readiness import NotReadyInTime, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMA_CLI = Path(sys.executable).parent / "chroma"
SERVICE_READY_TIMEOUT_S = float(os.environ.get("RAG_TEST_READY_TIMEOUT_S", "60"))
CHROMA_READY_TIMEOUT_S = float(os.environ.get("RAG_TEST_CHROMA_TIMEOUT_S", "30"))
STOP_TIMEOUT_S = 15.0
TEST_API_KEY = "test-api-key-0123456789abcdef"

SMALL_KNOWLEDGE = {
    "pods": "# Kubernetes Pods\n\nA Pod is the smallest deployable unit in Kubernetes. It groups "
    "one or more containers that share a network namespace and storage volumes.\n\n"
    "When a node fails, its pods are not moved: the controller creates replacement pods with "
    "new UIDs on other nodes.",
    "probes": "# Readiness and liveness probes\n\nA readiness probe decides whether a pod receives "
    "traffic from a Service. A failing readiness probe removes the pod from the Service's "
    "endpoints without restarting it.\n\nA liveness probe restarts the container after "
    "failureThreshold consecutive failures, 3 by default.",
    "nodeport": "# NodePort Services\n\nA NodePort Service opens the same port on every node. "
    "The default NodePort range is 30000-32767, set by the API server flag "
    "--service-node-port-range.",
    "rag": "# Retrieval-augmented generation\n\nRetrieval-augmented generation answers a question "
    "by first retrieving relevant passages from a vector store and then asking a language "
    "model to answer from those passages only. Cosine similarity compares embedding vectors.",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_port() -> int:
    """A loopback port with nothing listening (taken and released at once)."""
    return free_port()


def write_knowledge(directory: Path, documents: Mapping[str, str] = SMALL_KNOWLEDGE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for doc_id, text in documents.items():
        (directory / f"{doc_id}.md").write_text(text, encoding="utf-8")
    return directory


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"ORT_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False"})
    return env


class ServiceProcess:
    """`python -m rag_api` on a free loopback port with the given RAG_* settings."""

    def __init__(self, workdir: Path, settings: Mapping[str, str], name: str = "rag-api") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.env = base_env()
        self.env.update({"RAG_HOST": "127.0.0.1", "RAG_PORT": str(self.port), **settings})
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> ServiceProcess:
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rag_api"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = SERVICE_READY_TIMEOUT_S) -> dict[str, object]:
        assert self.process is not None
        try:
            return wait_until_ready(self.url, timeout_s=timeout_s)
        except NotReadyInTime as error:
            code = self.process.poll()
            raise AssertionError(
                f"{error}\nprocess exit code: {code}\nlast log lines:\n{self.logs()}"
            ) from error

    def logs(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, SIGKILL if it must; never raises. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


class ChromaServer:
    """A real `chroma run` on a free loopback port with its data in a tmp dir."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.data = workdir / f"chroma-{self.port}"
        self.log_path = workdir / f"chroma-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChromaServer:
        args = [str(CHROMA_CLI), "run", "--path", str(self.data)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, env=base_env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + CHROMA_READY_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1)
                if response.status_code == 200:
                    return self
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = repr(error)
            time.sleep(0.1)
        code = self.process.poll()
        self.stop()
        raise AssertionError(
            f"chroma server on port {self.port} not up within {CHROMA_READY_TIMEOUT_S}s "
            f"(exit code {code}); last saw: {last}\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> ChromaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
