"""`LocalCluster`: the client side of the local cluster (the ClusterProvider interface).

Every method is a short request to the supervisor daemon over its unix socket (see
`supervisor.py`), so `harness up`, `harness status`, `harness kill` and `harness down` can be
separate processes. `up` validates the manifests and the ports before it starts anything,
and anything `up` started is stopped again when `up` fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.providers.base import (
    ClusterError,
    ClusterEvent,
    ClusterInfo,
    ClusterProvider,
    PodInfo,
    RolloutTimeout,
)
from harness.providers.local.layout import (
    DEFAULT_UP_TIMEOUT_S,
    UP_TIMEOUT_ENV,
    StateLayout,
    bind_error,
    default_state_dir,
    env_float,
    iter_pod_addresses,
    kill_group,
    kill_marked_processes,
    pid_alive,
    read_json,
    tail_lines,
    write_json_atomic,
)
from harness.providers.local.manifests import (
    API_SECRET_KEY,
    API_SECRET_NAME,
    REPO_ROOT,
    ImageMapping,
    parse_objects,
    render_overlay,
)

DEFAULT_OVERLAY = REPO_ROOT / "k8s" / "overlays" / "local"
DEFAULT_POD_NETWORK = "127.0.1.0/24"
REQUEST_TIMEOUT_S = 15.0
DAEMON_START_TIMEOUT_S = 15.0
ROLLOUT_POLL_S = 0.1
# the supervisor bounds its own shutdown by the longest grace period + 10 s
DOWN_WAIT_S = 60.0
RUNTIME_CHOICES = ("process", "docker", "auto")
# `auto` asks the engine once; a dead socket must not stall `harness up`
ENGINE_PROBE_TIMEOUT_S = 3.0


class LocalCluster(ClusterProvider):
    """Kubernetes semantics for the harness's manifests on one machine (see DESIGN.md)."""

    name = "local"

    def __init__(
        self,
        state_dir: Path | None = None,
        runtime: str = "process",
        overlay: Path | None = None,
        *,
        pod_network: str = DEFAULT_POD_NETWORK,
        node_ports: Mapping[str, int] | None = None,
        image_mappings: Mapping[str, ImageMapping] | None = None,
        namespace: str = "default",
        up_timeout_s: float | None = None,
    ) -> None:
        """
        state_dir: where the daemon keeps state, logs and volumes (default
            $HARNESS_STATE_DIR/local, else <repo>/.state/local).
        pod_network: a loopback /24; pods get .2 .. .254 (tests pick their own).
        node_ports: Service name -> nodePort overriding the manifest's first port
            (so a second cluster can run beside one on 31859).
        image_mappings: image repository -> ImageMapping, added to the built-in ones.
        """
        self.layout = StateLayout(Path(state_dir or default_state_dir()).resolve())
        if runtime not in RUNTIME_CHOICES:
            raise ClusterError(
                f"unknown local runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}"
            )
        self.requested_runtime = runtime
        self._runtime: str | None = None if runtime == "auto" else runtime
        self.runtime_reason = "" if runtime == "auto" else f"--runtime {runtime}"
        self.overlay = Path(overlay) if overlay else DEFAULT_OVERLAY
        self.pod_network = pod_network
        self.node_ports = dict(node_ports or {})
        self.image_mappings = dict(image_mappings or {})
        self.namespace = namespace
        self.up_timeout_s = up_timeout_s or env_float(UP_TIMEOUT_ENV, DEFAULT_UP_TIMEOUT_S)
        self._daemon: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ transport
    def _request(self, op: str, timeout_s: float = REQUEST_TIMEOUT_S, **args: Any) -> Any:
        path = self.layout.socket_path
        payload = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout_s)
                conn.connect(str(path))
                conn.sendall(payload)
                chunks = []
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ClusterError(
                f"the local cluster is not running (no supervisor at {path}); start it with "
                "`harness up --cluster local`"
            ) from exc
        except TimeoutError as exc:
            raise ClusterError(
                f"the local cluster supervisor did not answer {op!r} in {timeout_s}s"
            ) from exc
        if not chunks:
            raise ClusterError(f"the local cluster supervisor closed the connection on {op!r}")
        response = json.loads(b"".join(chunks))
        if not response.get("ok"):
            raise ClusterError(f"local cluster: {op} failed: {response.get('error')}")
        return response["result"]

    def _running(self) -> bool:
        try:
            self._request("ping", timeout_s=2.0)
        except ClusterError:
            return False
        return True

    @property
    def runtime(self) -> str:
        """`process` or `docker`; `auto` is resolved here, once: docker when an engine answers."""
        if self._runtime is None:
            from harness.providers.images import docker_engine_answers

            answers, detail = docker_engine_answers(ENGINE_PROBE_TIMEOUT_S)
            self._runtime = "docker" if answers else "process"
            self.runtime_reason = (
                f"auto: Docker engine {detail} answers" if answers else f"auto: process ({detail})"
            )
        return self._runtime

    def _docker_runtime(self) -> Any:
        from harness.providers.local.docker_runtime import DockerRuntime

        return DockerRuntime(self.layout.root)

    def _running_runtime(self) -> str:
        """The runtime of the cluster behind this state dir (its config), else the chosen one."""
        config = read_json(self.layout.config_file) or {}
        return str(config.get("runtime") or self.runtime)

    # ------------------------------------------------------------ manifests
    def _objects(self, overlay: Path) -> list[dict[str, Any]]:
        objects = render_overlay(overlay)
        for obj in objects:
            name = (obj.get("metadata") or {}).get("name")
            if obj.get("kind") == "Service" and name in self.node_ports:
                ports = (obj.get("spec") or {}).get("ports") or []
                if ports:
                    ports[0]["nodePort"] = int(self.node_ports[name])
        return objects

    def _generated_secrets(
        self, objects: list[dict[str, Any]], create: bool
    ) -> dict[str, dict[str, str]]:
        """The API key Secret, generated once per state dir unless the manifests carry it."""
        if any(
            o.get("kind") == "Secret" and o["metadata"]["name"] == API_SECRET_NAME for o in objects
        ):
            return {}
        stored = read_json(self.layout.secrets_file)
        if isinstance(stored, dict) and API_SECRET_NAME in stored:
            return stored
        generated = {API_SECRET_NAME: {API_SECRET_KEY: secrets.token_hex(16)}}
        if create:
            write_json_atomic(self.layout.secrets_file, generated, mode=0o600)
            os.chmod(self.layout.secrets_file, 0o600)
        return generated

    def _preflight_ports(self, objects: list[dict[str, Any]]) -> None:
        spec = parse_objects(
            objects, self.image_mappings, self._generated_secrets(objects, create=False)
        )
        problems = []
        for service in spec.services.values():
            for port in service.ports:
                if service.type == "NodePort" and port.node_port is not None:
                    why = bind_error("127.0.0.1", port.node_port)
                    if why:
                        problems.append(f"Service/{service.name} nodePort: {why}")
                if service.cluster_ip:
                    why = bind_error(service.cluster_ip, port.port)
                    if why:
                        problems.append(f"Service/{service.name} clusterIP: {why}")
        first_ip = next(iter_pod_addresses(self.pod_network))
        container_ports = sorted(
            {p for w in spec.workloads.values() for p in w.template.ports.values()}
        )
        for container_port in container_ports:
            # a wildcard listener (0.0.0.0:port) would take the port on every pod IP
            why = bind_error(first_ip, container_port)
            if why:
                problems.append(
                    f"containerPort {container_port} on pod IPs ({self.pod_network}): {why}"
                )
        if problems:
            raise ClusterError(
                "cannot start the local cluster, ports are taken:\n  "
                + "\n  ".join(problems)
                + "\nstop the process named, or pick other ports (LocalCluster(node_ports=...,"
                " pod_network=...)); `harness down --cluster local` stops an old local cluster"
            )

    # ------------------------------------------------------------ lifecycle
    def reachable(self) -> tuple[bool, str]:
        if not sys.platform.startswith("linux"):
            return False, "the local cluster needs Linux (loopback pod IPs, /proc, process groups)"
        if self.runtime == "docker":
            from harness.providers.images import docker_engine_answers

            answers, detail = docker_engine_answers(ENGINE_PROBE_TIMEOUT_S)
            if not answers:
                return False, (
                    f"the docker runtime needs a Docker engine: {detail}; start one with "
                    "`scripts/prepare-docker.sh start`, or use --runtime process"
                )
        return True, ""

    def up(self, replicas: int = 2) -> ClusterInfo:
        objects = self._objects(self.overlay)
        # validate everything before any process starts: a refusal leaves nothing behind
        parse_objects(objects, self.image_mappings, self._generated_secrets(objects, create=False))
        reused = self._running()
        if reused:
            running = self._request("status").get("runtime", "process")
            if running != self.runtime:
                raise ClusterError(
                    f"a local cluster with the {running} runtime already runs from "
                    f"{self.layout.root}; `harness down` it first to use the {self.runtime} runtime"
                )
        image: dict[str, Any] = {}
        if self.runtime == "docker":
            image = self._ensure_image()
        if not reused:
            self._preflight_ports(objects)
            self._start_daemon()
        try:
            generated = self._generated_secrets(objects, create=True)
            self._request("apply", objects=objects, replicas={"rag-api": replicas}, timeout_s=30.0)
            deadline = time.monotonic() + self.up_timeout_s
            self._wait_all(deadline)
        except ClusterError:
            if not reused:
                self.down(keep=True)  # nothing left running; state and logs kept to read
            raise
        api_key = generated.get(API_SECRET_NAME, {}).get(API_SECRET_KEY, "")
        if not api_key:
            api_key = self._secret_from_manifests(objects)
        status = self._request("status")
        return ClusterInfo(
            provider="local",
            url=self.service_url("rag-api") if "rag-api" in status["services"] else "",
            api_key=api_key,
            namespace=self.namespace,
            deployment="rag-api",
            replicas=replicas,
            extra={
                "state_dir": str(self.layout.root),
                "supervisor_pid": status["pid"],
                "supervisor_log": str(self.layout.daemon_log),
                "pod_network": self.pod_network,
                "reused_running_cluster": reused,
                "ignored_objects": status["ignored"],
                "runtime": self.runtime,
                "runtime_reason": self.runtime_reason,
                **({"image": image} if image else {}),
            },
        )

    def _ensure_image(self) -> dict[str, Any]:
        """The service image, built when missing or stale (cached between runs)."""
        from harness.providers.local.docker_runtime import (
            SERVICE_IMAGE,
            DockerError,
            ensure_service_image,
        )

        try:
            return ensure_service_image(SERVICE_IMAGE, progress=self._progress)
        except DockerError as exc:
            raise ClusterError(f"the docker runtime needs image {SERVICE_IMAGE}: {exc}") from exc

    @staticmethod
    def _progress(message: str) -> None:
        print(f"[local] {message}", file=sys.stderr, flush=True)

    @staticmethod
    def _secret_from_manifests(objects: list[dict[str, Any]]) -> str:
        import base64

        for obj in objects:
            if obj.get("kind") == "Secret" and obj["metadata"]["name"] == API_SECRET_NAME:
                if API_SECRET_KEY in (obj.get("stringData") or {}):
                    return str(obj["stringData"][API_SECRET_KEY])
                if API_SECRET_KEY in (obj.get("data") or {}):
                    return base64.b64decode(obj["data"][API_SECRET_KEY]).decode()
        return ""

    def _start_daemon(self) -> None:
        root = self.layout.root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cleanup_stale()
        write_json_atomic(
            self.layout.config_file,
            {
                "pod_network": self.pod_network,
                "namespace": self.namespace,
                "runtime": self.runtime,
                "image_mappings": {
                    repo: {
                        "image_workdir": m.image_workdir,
                        "host_dir": str(m.host_dir) if m.host_dir else None,
                        "default_command": list(m.default_command),
                    }
                    for repo, m in self.image_mappings.items()
                },
            },
        )
        with open(self.layout.daemon_log, "ab") as log_file:
            self._daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "harness.providers.local.supervisor",
                    "--state-dir",
                    str(root),
                ],
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._daemon.poll() is not None:
                raise ClusterError(
                    f"the local cluster supervisor exited with {self._daemon.returncode} at start; "
                    f"its log ({self.layout.daemon_log}):\n"
                    + "\n".join(tail_lines(self.layout.daemon_log, 30))
                )
            if self._running():
                return
            time.sleep(0.05)
        self._stop_daemon_process()
        raise ClusterError(
            f"the local cluster supervisor did not answer within {DAEMON_START_TIMEOUT_S}s; "
            f"its log ({self.layout.daemon_log}):\n"
            + "\n".join(tail_lines(self.layout.daemon_log, 30))
        )

    def _cleanup_stale(self) -> None:
        """A previous supervisor that died leaves a socket, a pidfile, maybe processes."""
        pid = self._pidfile_pid()
        if pid and pid_alive(pid) and not self._running():
            kill_group(pid, signal.SIGKILL)
        kill_marked_processes(self.layout.root)
        self._remove_containers()
        for stale in (self.layout.socket_path, self.layout.pidfile):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self.layout.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_daemon_process(self) -> None:
        pid = self._daemon.pid if self._daemon else self._pidfile_pid()
        if pid:
            kill_group(pid, signal.SIGKILL)
        if self._daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._daemon.wait(timeout=5)

    def down(self, keep: bool = False) -> None:
        """Graceful delete of every pod, proxies closed, then no process left behind."""
        pid = self._pidfile_pid()
        try:
            self._request("shutdown", timeout_s=5.0)
            asked = True
        except ClusterError:
            asked = False
        if pid is None and self._daemon is not None:
            pid = self._daemon.pid
        if pid is not None and asked:
            deadline = time.monotonic() + DOWN_WAIT_S
            while time.monotonic() < deadline and self._daemon_alive(pid):
                time.sleep(0.05)
        if pid is not None and self._daemon_alive(pid):
            kill_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and self._daemon_alive(pid):
                time.sleep(0.05)
            kill_group(pid, signal.SIGKILL)
        if self._daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._daemon.wait(timeout=5)
            self._daemon = None
        kill_marked_processes(self.layout.root)
        self._remove_containers()
        for leftover in (self.layout.socket_path, self.layout.pidfile):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if not keep and self.layout.root.exists():
            shutil.rmtree(self.layout.root, ignore_errors=True)

    def _remove_containers(self) -> None:
        """Every container this cluster made (by label), removed and checked gone. A
        supervisor that died (even SIGKILL) leaves its containers running: this ends them."""
        if self._running_runtime() != "docker":
            return
        from harness.providers.local.docker_runtime import DockerError

        try:
            removed = self._docker_runtime().remove_leftovers()
        except DockerError as exc:
            raise ClusterError(f"local cluster {self.layout.root}: {exc}") from exc
        if removed:
            self._progress(f"removed leftover containers: {', '.join(removed)}")

    def _daemon_alive(self, pid: int) -> bool:
        if self._daemon is not None and self._daemon.pid == pid:
            return self._daemon.poll() is None
        return pid_alive(pid)

    def load_image(self, image: str) -> None:
        """Nothing to load: the process runtime runs the mapped host directory, the docker
        runtime the engine's own images (built by `up`)."""

    def apply(self, overlay: Path) -> None:
        objects = self._objects(overlay)
        parse_objects(objects, self.image_mappings, self._generated_secrets(objects, create=False))
        self._request("apply", objects=objects, replicas={}, timeout_s=30.0)

    def _wait_all(self, deadline: float) -> None:
        names = sorted(self._request("rollout_status"))
        for name in names:
            self.wait_rollout(name, timeout_s=max(0.0, deadline - time.monotonic()))

    def wait_rollout(self, deployment: str = "rag-api", timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while True:
            status = self._request("rollout_status", names=[deployment])[deployment]
            if status["complete"]:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(ROLLOUT_POLL_S)
        raise RolloutTimeout(
            f"rollout of {status.get('kind', 'workload')} {deployment} not complete after "
            f"{timeout_s:.0f}s: desired {status.get('desired')}, updated {status.get('updated')}, "
            f"ready {status.get('ready')}, terminating {status.get('terminating')}\n"
            + self.diagnostics(app=None)
        )

    # ------------------------------------------------------------ probes
    def list_pods(self, app: str = "rag-api") -> list[PodInfo]:
        fields = set(PodInfo.__dataclass_fields__)
        return [
            PodInfo(**{k: v for k, v in pod.items() if k in fields})
            for pod in self._request("pods", app=app)
        ]

    def pod_details(self, app: str | None = "rag-api") -> list[dict[str, Any]]:
        """PodInfo fields plus container state, pid, owner and template hash."""
        return list(self._request("pods", app=app))

    def endpoints(self, service: str = "rag-api") -> list[str]:
        return list(self._request("endpoints", service=service))

    def watch(self, stop_after_s: float, app: str = "rag-api") -> Iterator[ClusterEvent]:
        fields = set(PodInfo.__dataclass_fields__)
        deadline = time.monotonic() + stop_after_s
        since: int | None = None
        epoch: str | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            batch = self._request(
                "watch",
                timeout_s=REQUEST_TIMEOUT_S,
                since=since,
                epoch=epoch,
                wait_s=min(remaining, 1.0),
            )
            seen = time.monotonic()
            epoch, since = batch["epoch"], batch["next"]
            for event in batch["events"]:
                if event.get("app") != app:
                    continue
                pod = event.get("pod")
                yield ClusterEvent(
                    kind=event["kind"],
                    type=event["type"],
                    at=float(event["at"]),
                    monotonic=seen,
                    pod=PodInfo(**{k: v for k, v in pod.items() if k in fields}) if pod else None,
                    endpoints=tuple(event.get("endpoints") or ()),
                )

    def service_url(self, service: str = "rag-api") -> str:
        services = self._request("services")
        info = services.get(service)
        if info is None:
            raise ClusterError(
                f"no Service {service!r} in the local cluster (have: {', '.join(sorted(services))})"
            )
        port = info["ports"][0]
        if info["type"] == "NodePort" and port.get("node_port"):
            return f"http://127.0.0.1:{port['node_port']}"
        if info["cluster_ip"]:
            return f"http://{info['cluster_ip']}:{port['port']}"
        raise ClusterError(
            f"Service {service} is not reachable from this machine "
            "(no nodePort or loopback clusterIP)"
        )

    def pod_url(self, pod: str) -> str:
        for info in self._request("pods", app=None):
            if info["name"] == pod:
                return f"http://{info['ip']}:{self._pod_port(info)}"
        raise ClusterError(f"no pod {pod!r} in the local cluster")

    def _pod_port(self, info: dict[str, Any]) -> int:
        status = self._request("status")
        for service in status["services"].values():
            for endpoint in service["endpoints"]:
                ip, port = endpoint.rsplit(":", 1)
                if ip == info["ip"]:
                    return int(port)
        return 8000  # the contract's containerPort when the pod is not (yet) an endpoint

    def pod_logs(self, pod: str, tail: int = 100) -> str:
        path = self.layout.pod_log(pod)
        if not path.exists():
            raise ClusterError(f"no logs for pod {pod!r} under {self.layout.logs_dir}")
        return "\n".join(tail_lines(path, tail))

    def desired_replicas(self, deployment: str = "rag-api") -> int:
        return int(self._request("desired", name=deployment))

    def diagnostics(self, app: str | None = "rag-api") -> str:
        try:
            return str(self._request("diagnostics", app=app))
        except ClusterError as exc:
            state = read_json(self.layout.state_file) or {}
            lines = [f"{exc}", f"last saved state ({self.layout.state_file}):"]
            for pod in state.get("pods", []):
                lines.append(
                    f"  {pod['name']} phase={pod['phase']} ready={pod['ready']} "
                    f"restarts={pod['restarts']}"
                )
            lines.append("supervisor log:")
            lines.extend("  | " + line for line in tail_lines(self.layout.daemon_log, 20))
            return "\n".join(lines)

    def status(self) -> dict[str, Any]:
        """Workloads, Services (listeners, endpoints, proxy counters) and pods."""
        return dict(self._request("status"))

    # ------------------------------------------------------------ actions
    def delete_pod(self, pod: str, grace_period_s: int | None = None) -> None:
        self._request("delete_pod", name=pod, grace_s=grace_period_s)

    def kill_container(self, pod: str, signal_name: str = "SIGKILL") -> None:
        if signal_name not in signal.Signals.__members__:
            raise ClusterError(f"unknown signal {signal_name!r}")
        self._request("kill_container", name=pod, signal=signal_name)

    def breach_memory_limit(self, pod: str) -> dict[str, Any]:
        """OOM-kill a pod's container by breaching its memory limit (docker runtime only):
        the limit is lowered at run time to just above the usage and the cgroup filled."""
        if self._running_runtime() != "docker":
            raise ClusterError(
                f"pod {pod}: a memory limit can only be breached with the docker runtime "
                f"(this local cluster runs pods as processes); `harness up --runtime docker`"
            )
        result: dict[str, Any] = self._request("breach_memory_limit", name=pod, timeout_s=60.0)
        return result

    def freeze_pod(self, pod: str, seconds: float) -> dict[str, Any]:
        """SIGSTOP the pod's processes; the supervisor sends SIGCONT after `seconds`."""
        return self.freeze_pods([pod], seconds)

    def freeze_pods(self, pods: list[str], seconds: float) -> dict[str, Any]:
        """SIGSTOP several pods in one step (one known outage); SIGCONT after `seconds`.
        Returns ``stopped_at`` (epoch) and the pods frozen."""
        if not 0 < seconds <= 300:
            raise ClusterError(f"freeze seconds must be in (0, 300], got {seconds}")
        result: dict[str, Any] = self._request("freeze", names=list(pods), seconds=float(seconds))
        return result

    def scale(self, deployment: str, replicas: int) -> None:
        self._request("scale", name=deployment, replicas=int(replicas))

    def rollout_restart(self, deployment: str = "rag-api") -> None:
        self._request("rollout_restart", name=deployment)
