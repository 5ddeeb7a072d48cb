"""Small, bounded helpers around the docker CLI for the image tests.

Every call has a timeout and an argument list; a failure says what was attempted and what
docker answered. Containers started here use host networking on a loopback port, as the local
cluster's docker runtime does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

IMAGE = os.environ.get("RAG_DOCKER_IMAGE", "rag-api:dev")
PREPARE_HINT = (
    "run `scripts/prepare-docker.sh build` (installs and starts an engine, builds {image})"
)

# every timeout a named constant, overridable from the environment
DOCKER_CALL_TIMEOUT_S = float(os.environ.get("RAG_DOCKER_CALL_TIMEOUT_S", "30"))
READY_TIMEOUT_S = float(os.environ.get("RAG_DOCKER_READY_TIMEOUT_S", "90"))
STOP_GRACE_S = 30  # the manifests' terminationGracePeriodSeconds


class DockerError(RuntimeError):
    """A docker command failed or did not finish in time; the message has its output."""


def docker(
    *args: str, timeout_s: float = DOCKER_CALL_TIMEOUT_S, what: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["docker", *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(
            f"{what}: `{' '.join(argv)}` did not finish within {timeout_s:g}s "
            f"(stderr so far: {exc.stderr!r})"
        ) from exc
    if check and proc.returncode != 0:
        raise DockerError(
            f"{what}: `{' '.join(argv)}` exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc


def engine_version() -> tuple[bool, str]:
    """(True, server version) when an engine answers, else (False, why not)."""
    try:
        proc = docker(
            "version", "--format", "{{.Server.Version}}", timeout_s=10, what="ask the engine"
        )
    except FileNotFoundError:
        return False, "no docker CLI on PATH"
    except DockerError as exc:
        return False, str(exc)
    return True, proc.stdout.strip()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServiceContainer:
    """One rag-api container on the host network, serving on 127.0.0.1:<port>."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self) -> dict[str, Any]:
        proc = docker("inspect", self.name, what=f"inspect container {self.name}")
        return dict(json.loads(proc.stdout)[0])

    def logs_tail(self, lines: int = 30) -> str:
        proc = docker(
            "logs", "--tail", str(lines), self.name, what=f"logs of {self.name}", check=False
        )
        return (proc.stdout + proc.stderr).strip()

    def diagnostics(self) -> str:
        try:
            state = self.inspect()["State"]
        except (DockerError, KeyError, IndexError, json.JSONDecodeError) as exc:
            state = f"<inspect failed: {exc}>"
        return f"container {self.name} state: {state}\nlast log lines:\n{self.logs_tail()}"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Poll /readyz until 200; returns the seconds it took, raises with diagnostics."""
        started = time.monotonic()
        deadline = started + timeout_s
        last_seen = "no answer yet"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.get("/readyz")
                    if response.status_code == 200:
                        return time.monotonic() - started
                    last_seen = f"HTTP {response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as exc:
                    last_seen = f"{type(exc).__name__}: {exc}"
                if self.inspect()["State"]["Status"] == "exited":
                    break
                time.sleep(0.5)
        raise AssertionError(
            f"{self.url}/readyz not ready within {timeout_s:g}s; last seen: {last_seen}\n"
            + self.diagnostics()
        )


@dataclass
class ContainerFactory:
    """Starts service containers with unique names and removes every one at teardown."""

    image: str
    started: list[str] = field(default_factory=list)

    def run_service(
        self, *, env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()
    ) -> ServiceContainer:
        name = f"rag-api-test-{uuid.uuid4().hex[:10]}"
        port = free_loopback_port()
        service_env = {
            "RAG_HOST": "127.0.0.1",
            "RAG_PORT": str(port),
            "RAG_STORE": "embedded",
            "RAG_CHROMA_PATH": "/var/lib/rag-api/chroma",
            "RAG_POD_NAME": name,
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        argv = [
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            # the manifests' securityContext: read-only root, no capabilities, no escalation
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--tmpfs",
            "/tmp:rw,size=64m",
            "--tmpfs",
            "/var/lib/rag-api:rw,size=512m,uid=10001,gid=10001,mode=0750",
            *extra_args,
        ]
        for key, value in service_env.items():
            argv += ["--env", f"{key}={value}"]
        # recorded before the run: a half-started container is removed too
        self.started.append(name)
        docker(*argv, self.image, timeout_s=60, what=f"start container {name}")
        return ServiceContainer(name=name, port=port)

    def remove_all(self) -> list[str]:
        """Force-remove every container started here; never raises, returns the problems."""
        problems = []
        for name in self.started:
            try:
                proc = docker("rm", "--force", name, what=f"remove {name}", check=False)
                if proc.returncode != 0 and "No such container" not in proc.stderr:
                    problems.append(f"{name}: {proc.stderr.strip()}")
            except (DockerError, OSError) as exc:
                problems.append(f"{name}: {exc}")
        self.started.clear()
        return problems
