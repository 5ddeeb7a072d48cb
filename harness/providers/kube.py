"""Shared code for real Kubernetes clusters (minikube, kind, k3d, any kubeconfig context).

The provider talks to the API server with the official ``kubernetes`` client and keeps
shelling out to the few things only a command line does: ``kubectl kustomize`` (render an
overlay) and ``kubectl port-forward`` (reach one pod or a Service no node port reaches).
Every subprocess gets an argument list and a timeout.

The functions at the top are pure (objects in, values out) so they are unit-tested without a
cluster; :class:`KubeCluster` wires them to a live API server and is subclassed per provider.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.providers.base import (
    ClusterError,
    ClusterEvent,
    ClusterInfo,
    ClusterProvider,
    ClusterUnavailable,
    PodInfo,
    RolloutTimeout,
)

log = logging.getLogger(__name__)

# --- contract names (docs/contracts.md) -------------------------------------------------------
APP_DEPLOYMENT = "rag-api"
APP_CONTAINER = "rag-api"
APP_SERVICE = "rag-api"
APP_IMAGE = "rag-api:dev"
APP_CONTAINER_PORT = 8000
NODE_PORT = 31859
API_KEY_SECRET = "rag-api-secret"  # noqa: S105 (a Secret name, not a secret)
API_KEY_SECRET_KEY = "api-key"  # noqa: S105 (a key name)
NAMESPACE_PREFIX = "rag-e2e"
FIELD_MANAGER = "rag-harness"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"

T = TypeVar("T")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ClusterError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ClusterError(f"{name}={raw!r} must be > 0 seconds")
    return value


@dataclass(frozen=True)
class KubeTimeouts:
    """Every wait a real provider does, in seconds; each overridable by an environment variable."""

    probe_s: float = 5.0  # HARNESS_PROBE_TIMEOUT_S: one API call / `minikube status`
    api_s: float = 30.0  # HARNESS_API_TIMEOUT_S: one ordinary API request
    kubectl_s: float = 60.0  # HARNESS_KUBECTL_TIMEOUT_S: `kubectl kustomize`, `kubectl exec`
    rollout_s: float = 300.0  # HARNESS_ROLLOUT_TIMEOUT_S: a rollout to complete
    cluster_create_s: float = 600.0  # HARNESS_CLUSTER_CREATE_TIMEOUT_S: create/start a cluster
    cluster_delete_s: float = 180.0  # HARNESS_CLUSTER_DELETE_TIMEOUT_S
    image_build_s: float = 1200.0  # HARNESS_IMAGE_BUILD_TIMEOUT_S: `docker build`
    image_load_s: float = 600.0  # HARNESS_IMAGE_LOAD_TIMEOUT_S: `kind load` & co
    port_forward_s: float = 15.0  # HARNESS_PORT_FORWARD_TIMEOUT_S: until kubectl says Forwarding

    @classmethod
    def from_env(cls) -> KubeTimeouts:
        d = cls()
        return cls(
            probe_s=_env_float("HARNESS_PROBE_TIMEOUT_S", d.probe_s),
            api_s=_env_float("HARNESS_API_TIMEOUT_S", d.api_s),
            kubectl_s=_env_float("HARNESS_KUBECTL_TIMEOUT_S", d.kubectl_s),
            rollout_s=_env_float("HARNESS_ROLLOUT_TIMEOUT_S", d.rollout_s),
            cluster_create_s=_env_float("HARNESS_CLUSTER_CREATE_TIMEOUT_S", d.cluster_create_s),
            cluster_delete_s=_env_float("HARNESS_CLUSTER_DELETE_TIMEOUT_S", d.cluster_delete_s),
            image_build_s=_env_float("HARNESS_IMAGE_BUILD_TIMEOUT_S", d.image_build_s),
            image_load_s=_env_float("HARNESS_IMAGE_LOAD_TIMEOUT_S", d.image_load_s),
            port_forward_s=_env_float("HARNESS_PORT_FORWARD_TIMEOUT_S", d.port_forward_s),
        )


# --- pure helpers -----------------------------------------------------------------------------


def new_namespace_name(prefix: str = NAMESPACE_PREFIX) -> str:
    """A fresh namespace per session: ``rag-e2e-<8 hex>`` (a valid DNS-1123 label)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def generate_api_key() -> str:
    return secrets.token_hex(24)


def _epoch(value: dt.datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # the client deserialises to datetime; watch dicts may not
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def pod_info_from_v1(pod: Any) -> PodInfo:
    """Convert a ``kubernetes.client.V1Pod`` to the harness's PodInfo.

    ``phase`` reads ``Terminating`` once a deletionTimestamp is set (as kubectl shows it),
    ``ready`` is the pod's Ready condition, ``restarts`` the sum over its containers, and
    ``last_termination_reason`` the most recent container termination (lastState, else a
    container that is terminated right now).
    """
    meta = pod.metadata
    status = pod.status
    spec = pod.spec
    labels = meta.labels or {}
    deleting = meta.deletion_timestamp is not None
    ready = False
    ready_since: float | None = None
    for condition in (status.conditions if status else None) or []:
        if condition.type == "Ready" and condition.status == "True":
            ready = True
            ready_since = _epoch(condition.last_transition_time)
    restarts = 0
    reason = ""
    for container in (status.container_statuses if status else None) or []:
        restarts += container.restart_count or 0
        last = container.last_state.terminated if container.last_state else None
        now = container.state.terminated if container.state else None
        for terminated in (last, now):
            if terminated is not None and terminated.reason and not reason:
                reason = terminated.reason
    phase = "Terminating" if deleting else ((status.phase if status else None) or "Pending")
    return PodInfo(
        name=meta.name,
        uid=meta.uid or "",
        phase=phase,
        # a pod being deleted leaves the Service's endpoints at once, whatever its condition says
        ready=ready and not deleting,
        restarts=restarts,
        created=_epoch(meta.creation_timestamp) or 0.0,
        app=labels.get("app", ""),
        ip=(status.pod_ip if status else None) or "",
        node=(spec.node_name if spec else None) or "",
        ready_since=ready_since if ready and not deleting else None,
        deleting=deleting,
        last_termination_reason=reason,
    )


def rollout_status(obj: Any) -> tuple[bool, str]:
    """(complete, why not) for a V1Deployment or V1StatefulSet.

    Complete means, exactly: ``observedGeneration >= generation`` (the controller has seen the
    latest spec), ``updatedReplicas == replicas`` and ``readyReplicas == replicas``. We also
    require ``status.replicas == replicas`` as ``kubectl rollout status`` does, so old pods of
    a rolling restart that still count are waited out.
    """
    desired = obj.spec.replicas if obj.spec.replicas is not None else 1
    status = obj.status
    generation = obj.metadata.generation or 0
    observed = (status.observed_generation if status else None) or 0
    ready = (status.ready_replicas if status else None) or 0
    updated = (status.updated_replicas if status else None) or 0
    current = (status.replicas if status else None) or 0
    if observed < generation:
        return False, f"observedGeneration {observed} < generation {generation}"
    if updated != desired:
        return False, f"updatedReplicas {updated} of {desired}"
    if ready != desired:
        return False, f"readyReplicas {ready} of {desired}"
    if current != desired:
        return False, f"{current} replicas exist, {desired} desired (old pods terminating)"
    return True, f"{ready}/{desired} ready"


def endpoint_addresses_from_slices(slices: Iterable[Any]) -> list[str]:
    """Ready ``ip:port`` addresses over a Service's V1EndpointSlices.

    A missing ``ready`` condition means ready (the API's documented meaning).
    """
    out: set[str] = set()
    for endpoint_slice in slices:
        ports = [p.port for p in (endpoint_slice.ports or []) if p.port is not None]
        for endpoint in endpoint_slice.endpoints or []:
            conditions = endpoint.conditions
            if conditions is not None and conditions.ready is False:
                continue
            for address in endpoint.addresses or []:
                out.update(f"{address}:{port}" for port in ports)
    return sorted(out)


def endpoint_addresses_from_endpoints(endpoints: Any) -> list[str]:
    """Ready ``ip:port`` addresses of a V1Endpoints (older clusters without EndpointSlices)."""
    out: set[str] = set()
    for subset in endpoints.subsets or []:
        ports = [p.port for p in (subset.ports or [])]
        for address in subset.addresses or []:
            out.update(f"{address.ip}:{port}" for port in ports)
    return sorted(out)


def pick_node_address(nodes: Iterable[Any], prefer: Sequence[str] = ("InternalIP",)) -> str | None:
    """The first address of the preferred types over V1Nodes (Ready nodes first)."""

    def is_ready(node: Any) -> bool:
        conditions = (node.status.conditions if node.status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    ordered = sorted(nodes, key=lambda n: not is_ready(n))
    for wanted in prefer:
        for node in ordered:
            for address in (node.status.addresses if node.status else None) or []:
                if address.type == wanted and address.address:
                    return str(address.address)
    return None


def node_port_of(service: Any, port_name: str | None = None) -> int | None:
    """The nodePort of a V1Service (the named port, else the first one that has a nodePort)."""
    for port in service.spec.ports or []:
        if port.node_port and (port_name is None or port.name == port_name):
            return int(port.node_port)
    return None


def container_port_of(pod: Any, container: str = APP_CONTAINER, name: str = "http") -> int:
    for spec in pod.spec.containers or []:
        if spec.name != container and len(pod.spec.containers) > 1:
            continue
        for port in spec.ports or []:
            if port.name == name or len(spec.ports) == 1:
                return int(port.container_port)
    return APP_CONTAINER_PORT


def container_id_of(pod: Any, container: str = APP_CONTAINER) -> str:
    """The runtime's id of a container ("containerd://abc" -> "abc"), "" when not started."""
    statuses = (pod.status.container_statuses if pod.status else None) or []
    for status in statuses:
        if (status.name == container or len(statuses) == 1) and status.container_id:
            return str(status.container_id).split("://", 1)[-1]
    return ""


def restart_patch(now: dt.datetime | None = None) -> dict[str, Any]:
    """The patch `kubectl rollout restart` sends: a new template annotation."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}


def scale_patch(replicas: int) -> dict[str, Any]:
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    return {"spec": {"replicas": replicas}}


def prepare_objects(
    objects: Iterable[Mapping[str, Any]],
    namespace: str,
    *,
    replicas: Mapping[str, int] | None = None,
    images: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rendered manifests made ready for one namespace.

    Namespaced objects get ``metadata.namespace``; Namespace objects are dropped (the harness
    owns the namespace); ``replicas`` sets spec.replicas by Deployment/StatefulSet name;
    ``images`` rewrites container images (e.g. ``rag-api:dev`` -> a registry reference on an
    existing cluster that cannot load local images).
    """
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
    }
    out: list[dict[str, Any]] = []
    for original in objects:
        obj = json.loads(json.dumps(original))  # a deep copy that is plain JSON
        kind = obj.get("kind", "")
        if kind == "Namespace":
            continue
        if kind not in cluster_scoped:
            obj.setdefault("metadata", {})["namespace"] = namespace
        name = obj.get("metadata", {}).get("name", "")
        if replicas and kind in ("Deployment", "StatefulSet") and name in replicas:
            obj.setdefault("spec", {})["replicas"] = int(replicas[name])
        if images:
            pod_spec = _pod_spec_of(obj)
            for key in ("containers", "initContainers"):
                for container in (pod_spec or {}).get(key, []) or []:
                    container["image"] = images.get(
                        container.get("image", ""), container.get("image")
                    )
        out.append(obj)
    return out


def _pod_spec_of(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec")


def kubectl_argv(
    args: Sequence[str],
    *,
    kubeconfig: Path | str | None = None,
    context: str | None = None,
    namespace: str | None = None,
) -> list[str]:
    argv = ["kubectl"]
    if kubeconfig:
        argv += ["--kubeconfig", str(kubeconfig)]
    if context:
        argv += ["--context", context]
    if namespace:
        argv += ["--namespace", namespace]
    return argv + list(args)


def port_forward_args(target: str, remote_port: int) -> list[str]:
    """``kubectl port-forward`` on a free loopback port chosen by kubectl (``:PORT``)."""
    return ["port-forward", "--address", "127.0.0.1", target, f":{remote_port}"]


_FORWARDING_RE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


def parse_forwarding_port(line: str) -> int | None:
    """kubectl prints ``Forwarding from 127.0.0.1:41235 -> 8000`` once it listens."""
    match = _FORWARDING_RE.search(line)
    return int(match.group(1)) if match else None


def crictl_stop_argv(container_id: str) -> list[str]:
    """Stop a container on its node with no grace: the runtime sends SIGKILL at once."""
    return ["crictl", "stop", "--timeout", "0", container_id]


def signal_pid1_argv(signal_name: str) -> list[str]:
    """`kubectl exec` payload that signals the container's PID 1 through the image's python.

    Works only for signals PID 1 has a handler for (SIGTERM, SIGINT): the kernel drops other
    signals sent to a namespace's init from inside the namespace, SIGKILL included.
    """
    sig = signal_name.upper()
    if not sig.startswith("SIG"):
        sig = "SIG" + sig
    if not re.fullmatch(r"SIG[A-Z0-9]+", sig):
        raise ValueError(f"not a signal name: {signal_name!r}")
    return ["python", "-c", f"import os, signal; os.kill(1, signal.{sig})"]


# --- pytest-kubernetes quirks, wrapped --------------------------------------------------------

_ENVIRON_LOCK = threading.Lock()
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:@=,+-]+")


def shell_safe(token: str, what: str) -> str:
    """Refuse a value that a shell would interpret.

    pytest-kubernetes joins its arguments into one string run with ``shell=True``; we only
    hand it tokens that mean the same to a shell as they would in an argument list.
    """
    if not _SHELL_SAFE.fullmatch(token):
        raise ClusterError(
            f"{what} {token!r} contains characters a shell would interpret; pytest-kubernetes "
            "runs its commands through a shell, so use a name/path of letters, digits and ./_-"
        )
    return token


def call_with_environ_restored(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a pytest-kubernetes manager method and undo what it does to ``os.environ``.

    Its ``_exec`` passes ``env=os.environ.update(extra)``: that adds e.g. KUBECONFIG to *our*
    process environment for good (and hands the child ``env=None``, i.e. the mutated
    environment). We snapshot the environment, call, and restore it exactly, under a lock so
    two threads do not interleave snapshots. Its errors (CalledProcessError with the output,
    TimeoutExpired, RuntimeError) become ClusterError with the command's stderr.
    """
    with _ENVIRON_LOCK:
        snapshot = dict(os.environ)
        try:
            return fn(*args, **kwargs)
        except subprocess.CalledProcessError as exc:
            output = _text(exc.stderr) or _text(exc.stdout)
            raise ClusterError(
                f"command failed (exit {exc.returncode}): {exc.cmd}\n{_tail(output, 30)}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"command timed out after {exc.timeout}s: {exc.cmd}") from exc
        except RuntimeError as exc:
            raise ClusterError(f"pytest-kubernetes: {exc}") from exc
        finally:
            for key in set(os.environ) - set(snapshot):
                del os.environ[key]
            for key, value in snapshot.items():
                if os.environ.get(key) != value:
                    os.environ[key] = value


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_command(
    argv: Sequence[str], timeout_s: float, what: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, timeout). Failures say what was attempted and the output."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise ClusterUnavailable(f"{what}: {argv[0]} not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"{what}: `{' '.join(argv)}` did not finish within {timeout_s:g}s; "
            f"output so far: {_tail(_text(exc.stderr) or _text(exc.stdout), 10)!r}"
        ) from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{what}: `{' '.join(argv)}` exited {proc.returncode}:\n"
            f"{_tail(proc.stderr or proc.stdout, 30)}"
        )
    return proc


def render_kustomize(overlay: Path, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` -> the rendered objects (a list of dicts)."""
    if (
        not (overlay / "kustomization.yaml").is_file()
        and not (overlay / "kustomization.yml").is_file()
    ):
        raise ClusterError(f"{overlay} is not a kustomize directory (no kustomization.yaml)")
    proc = run_command(["kubectl", "kustomize", str(overlay)], timeout_s, f"render {overlay}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# --- port-forward -----------------------------------------------------------------------------


@dataclass
class PortForward:
    """One ``kubectl port-forward`` process; :meth:`close` ends it (terminate, then kill)."""

    target: str
    local_port: int
    process: subprocess.Popen[str]
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self.process.stdout:
            self.process.stdout.close()

    @classmethod
    def start(cls, argv: Sequence[str], target: str, timeout_s: float) -> PortForward:
        """Start kubectl and wait (bounded) until it prints the local port it listens on."""
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            # kubectl prints a line per connection; keep reading so its pipe never fills.
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=drain, name=f"port-forward {target}", daemon=True)
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line.rstrip())
            port = parse_forwarding_port(line)
            if port is not None:
                return cls(target=target, local_port=port, process=process, _reader=reader)
        forward = cls(target=target, local_port=0, process=process, _reader=reader)
        forward.close()
        raise ClusterError(
            f"kubectl port-forward {target} did not report a local port within {timeout_s:g}s "
            f"(exit code {process.returncode}); it said: {' | '.join(seen[-5:]) or 'nothing'}"
        )


# --- the provider -----------------------------------------------------------------------------


def default_state_dir() -> Path:
    return Path(os.environ.get("HARNESS_STATE_DIR") or (Path.cwd() / ".harness"))


class KubeCluster(ClusterProvider):
    """A provider over a real API server. Subclasses add the cluster lifecycle.

    Hooks for subclasses: :meth:`_ensure_cluster` (create or reuse; returns True when this call
    created it), :meth:`_delete_cluster`, :meth:`_node_url` (URL for a nodePort, or None to
    fall back to port-forward), :meth:`_node_exec_argv` (run a command on a node, for a hard
    container kill), :meth:`load_image`.

    State that must outlive one command (``harness up`` ... ``harness down``) -- namespace,
    kubeconfig, whether we created the cluster, the API key -- is kept in
    ``<state_dir>/<provider>.json``.
    """

    name = "existing"
    build_image_by_default = True

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        kubeconfig: Path | str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        overlay: Path | None = None,
        image: str | None = None,
        build_image: bool | None = None,
        timeouts: KubeTimeouts | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.timeouts = timeouts or KubeTimeouts.from_env()
        self.image = image or os.environ.get("HARNESS_IMAGE") or APP_IMAGE
        self.build_image = self.build_image_by_default if build_image is None else build_image
        self.overlay = overlay
        self.created_cluster = False
        self.api_key = ""
        state = self._load_state()
        self._state = state
        self.kubeconfig: Path | None = Path(kubeconfig) if kubeconfig else None
        if self.kubeconfig is None and state.get("kubeconfig"):
            self.kubeconfig = Path(state["kubeconfig"])
        self.context: str | None = context or state.get("context") or None
        self.namespace: str = namespace or state.get("namespace") or new_namespace_name()
        self.created_cluster = bool(state.get("created_cluster", False))
        self.api_key = str(state.get("api_key", ""))
        self.last_kill_method = ""
        self._api_client: Any = None
        self._forwards: dict[str, PortForward] = {}
        self._service_urls: dict[str, str] = {}

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.state_file, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "provider": self.name,
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig else "",
            "context": self.context or "",
            "namespace": self.namespace,
            "created_cluster": self.created_cluster,
            "api_key": self.api_key,
            **self._state_extra(),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)  # it holds the API key
        tmp.replace(self.state_file)

    def _state_extra(self) -> dict[str, Any]:
        """Provider-specific state to persist (e.g. the cluster name)."""
        return {}

    # -- clients -------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api_client is None:
            from kubernetes import config

            try:
                self._api_client = config.new_client_from_config(
                    config_file=str(self.kubeconfig) if self.kubeconfig else None,
                    context=self.context,
                )
            except (config.ConfigException, OSError) as exc:
                where = self.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                raise ClusterUnavailable(
                    f"no usable kubeconfig ({where}, context {self.context or 'current'}): "
                    f"{exc}; create a cluster (`harness up --cluster minikube`) or set KUBECONFIG"
                ) from exc
        return self._api_client

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._client())

    def _apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self._client())

    def _reset_client(self) -> None:
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
        self._api_client = None

    # -- hooks ---------------------------------------------------------------------------------
    def _ensure_cluster(self) -> bool:
        ok, why = self.reachable()
        if not ok:
            raise ClusterUnavailable(why)
        return False

    def _delete_cluster(self) -> None:
        """Delete the cluster itself; only called when this provider created it."""

    def _node_url(self, node_port: int) -> str | None:
        return None

    def _node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str] | None:
        return None

    def load_image(self, image: str) -> None:
        log.info("%s: no image load step; the cluster must be able to pull %s", self.name, image)

    def default_overlay(self) -> Path:
        candidate = K8S_DIR / "overlays" / self.name
        return candidate if candidate.is_dir() else K8S_DIR / "base"

    # -- probes --------------------------------------------------------------------------------
    def reachable(self) -> tuple[bool, str]:
        from kubernetes import client

        try:
            api = client.VersionApi(self._client())
            api.get_code(_request_timeout=self.timeouts.probe_s)
        except ClusterUnavailable as exc:
            return False, str(exc)
        except Exception as exc:
            host = getattr(getattr(self._api_client, "configuration", None), "host", "?")
            return False, (
                f"Kubernetes API at {host} not reachable within {self.timeouts.probe_s:g}s "
                f"({type(exc).__name__}: {exc}); start the cluster "
                f"(`harness up --cluster {self.name}`) or pick another with --cluster"
            )
        return True, ""

    def list_pods(self, app: str = APP_DEPLOYMENT) -> list[PodInfo]:
        pods = self._core().list_namespaced_pod(
            self.namespace, label_selector=f"app={app}", _request_timeout=self.timeouts.api_s
        )
        return sorted((pod_info_from_v1(p) for p in pods.items), key=lambda p: p.name)

    def endpoints(self, service: str = APP_SERVICE) -> list[str]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            slices = client.DiscoveryV1Api(self._client()).list_namespaced_endpoint_slice(
                self.namespace,
                label_selector=f"kubernetes.io/service-name={service}",
                _request_timeout=self.timeouts.api_s,
            )
            return endpoint_addresses_from_slices(slices.items)
        except ApiException as exc:
            if exc.status != 404:
                raise
        endpoints = self._core().read_namespaced_endpoints(
            service, self.namespace, _request_timeout=self.timeouts.api_s
        )
        return endpoint_addresses_from_endpoints(endpoints)

    def watch(self, stop_after_s: float, app: str = APP_DEPLOYMENT) -> Iterator[ClusterEvent]:
        """Pod and EndpointSlice events merged from two watches, for at most stop_after_s.

        Each watch runs in a thread (a watch stream blocks); both are bounded on the server
        (``timeout_seconds``) and stopped when the generator ends or is closed.
        """
        from kubernetes import client, watch

        deadline = time.monotonic() + stop_after_s
        server_timeout = max(1, int(stop_after_s) + 1)
        events: queue.Queue[ClusterEvent | BaseException] = queue.Queue()
        stop = threading.Event()
        watchers: list[Any] = []
        service = APP_SERVICE if app == APP_DEPLOYMENT else app

        def pump_pods() -> None:
            w = watch.Watch()
            watchers.append(w)
            for raw in w.stream(
                self._core().list_namespaced_pod,
                self.namespace,
                label_selector=f"app={app}",
                timeout_seconds=server_timeout,
                _request_timeout=server_timeout + 5,
            ):
                if stop.is_set():
                    break
                events.put(
                    ClusterEvent(
                        kind="pod",
                        type=raw["type"],
                        at=time.time(),
                        monotonic=time.monotonic(),
                        pod=pod_info_from_v1(raw["object"]),
                    )
                )

        def pump_slices() -> None:
            w = watch.Watch()
            watchers.append(w)
            by_slice: dict[str, list[str]] = {}
            for raw in w.stream(
                client.DiscoveryV1Api(self._client()).list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=f"kubernetes.io/service-name={service}",
                timeout_seconds=server_timeout,
                _request_timeout=server_timeout + 5,
            ):
                if stop.is_set():
                    break
                obj = raw["object"]
                if raw["type"] == "DELETED":
                    by_slice.pop(obj.metadata.name, None)
                else:
                    by_slice[obj.metadata.name] = endpoint_addresses_from_slices([obj])
                merged = sorted({a for addrs in by_slice.values() for a in addrs})
                events.put(
                    ClusterEvent(
                        kind="endpoints",
                        type=raw["type"],
                        at=time.time(),
                        monotonic=time.monotonic(),
                        endpoints=tuple(merged),
                    )
                )

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as exc:
                    if not stop.is_set():
                        events.put(exc)

            return run

        threads = [
            threading.Thread(target=guarded(pump_pods), name="watch pods", daemon=True),
            threading.Thread(target=guarded(pump_slices), name="watch endpoints", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    item = events.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise ClusterError(
                        f"watch in namespace {self.namespace} failed: {item}"
                    ) from item
                yield item
        finally:
            stop.set()
            for w in watchers:
                w.stop()

    def service_url(self, service: str = APP_SERVICE) -> str:
        if service in self._service_urls:
            return self._service_urls[service]
        svc = self._core().read_namespaced_service(
            service, self.namespace, _request_timeout=self.timeouts.api_s
        )
        node_port = node_port_of(svc)
        url = self._node_url(node_port) if node_port else None
        if url is None:
            port = svc.spec.ports[0].port
            url = self._port_forward(f"service/{service}", int(port)).url
        self._service_urls[service] = url
        return url

    def pod_url(self, pod: str) -> str:
        v1pod = self._core().read_namespaced_pod(
            pod, self.namespace, _request_timeout=self.timeouts.api_s
        )
        return self._port_forward(f"pod/{pod}", container_port_of(v1pod)).url

    def _port_forward(self, target: str, remote_port: int) -> PortForward:
        existing = self._forwards.get(target)
        if existing is not None and existing.alive():
            return existing
        argv = kubectl_argv(
            port_forward_args(target, remote_port),
            kubeconfig=self.kubeconfig,
            context=self.context,
            namespace=self.namespace,
        )
        forward = PortForward.start(argv, target, self.timeouts.port_forward_s)
        self._forwards[target] = forward
        return forward

    def close(self) -> None:
        """Stop every port-forward this object started and close the API client."""
        for forward in self._forwards.values():
            with contextlib.suppress(Exception):
                forward.close()
        self._forwards.clear()
        self._service_urls.clear()
        self._reset_client()

    def pod_logs(self, pod: str, tail: int = 100) -> str:
        v1pod = self._core().read_namespaced_pod(
            pod, self.namespace, _request_timeout=self.timeouts.api_s
        )
        names = [c.name for c in v1pod.spec.containers]
        container = APP_CONTAINER if APP_CONTAINER in names else names[0]
        return str(
            self._core().read_namespaced_pod_log(
                pod,
                self.namespace,
                container=container,
                tail_lines=tail,
                _request_timeout=self.timeouts.api_s,
            )
        )

    def _read_workload(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        apps = self._apps()
        try:
            return apps.read_namespaced_deployment(
                name, self.namespace, _request_timeout=self.timeouts.api_s
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            return apps.read_namespaced_stateful_set(
                name, self.namespace, _request_timeout=self.timeouts.api_s
            )
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterError(
                    f"no Deployment or StatefulSet {name!r} in namespace {self.namespace}"
                ) from exc
            raise

    def desired_replicas(self, deployment: str = APP_DEPLOYMENT) -> int:
        workload = self._read_workload(deployment)
        return int(workload.spec.replicas if workload.spec.replicas is not None else 1)

    def diagnostics(self, app: str = APP_DEPLOYMENT) -> str:
        """Pod phases and waiting reasons, recent events, last log lines. Never raises."""
        lines: list[str] = [f"namespace {self.namespace}:"]
        core = None
        try:
            core = self._core()
            pods = core.list_namespaced_pod(
                self.namespace, label_selector=f"app={app}", _request_timeout=self.timeouts.probe_s
            ).items
            if not pods:
                lines.append(f"  no pods with app={app}")
            for pod in pods:
                info = pod_info_from_v1(pod)
                waiting = [
                    f"{s.name}: {s.state.waiting.reason} {s.state.waiting.message or ''}".strip()
                    for s in (pod.status.container_statuses or [])
                    if s.state and s.state.waiting
                ]
                lines.append(
                    f"  pod {info.name} phase={info.phase} ready={info.ready} "
                    f"restarts={info.restarts}"
                    + (
                        f" last={info.last_termination_reason}"
                        if info.last_termination_reason
                        else ""
                    )
                    + (f" waiting=[{'; '.join(waiting)}]" if waiting else "")
                )
        except Exception as exc:
            lines.append(f"  (pods unavailable: {exc})")
            pods = []
        try:
            if core is not None:
                events = core.list_namespaced_event(
                    self.namespace, _request_timeout=self.timeouts.probe_s
                ).items

                def when(event: Any) -> float:
                    stamp = event.last_timestamp or event.event_time or event.first_timestamp
                    return _epoch(stamp) or 0.0

                lines.append("  recent events:")
                for event in sorted(events, key=when)[-15:]:
                    obj = event.involved_object
                    lines.append(
                        f"    {event.type} {event.reason} {obj.kind}/{obj.name}: "
                        f"{(event.message or '').strip()}"
                    )
        except Exception as exc:
            lines.append(f"  (events unavailable: {exc})")
        for pod in [p for p in pods if not pod_info_from_v1(p).ready][:3]:
            try:
                text = self.pod_logs(pod.metadata.name, tail=20)
                lines.append(f"  last log lines of {pod.metadata.name}:")
                lines.extend(f"    {line}" for line in text.splitlines()[-20:])
            except Exception as exc:
                lines.append(f"  (logs of {pod.metadata.name} unavailable: {exc})")
        return "\n".join(lines)

    # -- actions -------------------------------------------------------------------------------
    def up(self, replicas: int = 2) -> ClusterInfo:
        from harness.providers.images import build_image

        created = self._ensure_cluster()
        self.created_cluster = self.created_cluster or created
        self._reset_client()
        self._save_state()  # from here on, `down` can find and remove what we make
        if self.build_image:
            build_image(tag=self.image, timeout_s=self.timeouts.image_build_s)
            self.load_image(self.image)
        self._ensure_namespace()
        self.api_key = self._ensure_api_key_secret()
        self._save_state()
        self.apply(self.overlay or self.default_overlay(), replicas={APP_DEPLOYMENT: replicas})
        for name in self._applied_statefulsets:
            self.wait_rollout(name, self.timeouts.rollout_s)
        self.wait_rollout(APP_DEPLOYMENT, self.timeouts.rollout_s)
        return ClusterInfo(
            provider=self.name,
            url=self.service_url(),
            api_key=self.api_key,
            namespace=self.namespace,
            deployment=APP_DEPLOYMENT,
            replicas=replicas,
            extra={
                "kubeconfig": str(self.kubeconfig or ""),
                "context": self.context or "",
                "created_cluster": self.created_cluster,
            },
        )

    def _ensure_namespace(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=self.namespace, labels={"app.kubernetes.io/managed-by": FIELD_MANAGER}
            )
        )
        try:
            self._core().create_namespace(body, _request_timeout=self.timeouts.api_s)
        except ApiException as exc:
            if exc.status != 409:  # already there: a second `up` in the same session
                raise ClusterError(
                    f"cannot create namespace {self.namespace}: {exc.reason}"
                ) from exc

    def _ensure_api_key_secret(self) -> str:
        """Create Secret rag-api-secret (key api-key) with a fresh key, or read the one there."""
        import base64

        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        key = self.api_key or generate_api_key()
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=API_KEY_SECRET),
            type="Opaque",
            string_data={API_KEY_SECRET_KEY: key},
        )
        try:
            self._core().create_namespaced_secret(
                self.namespace, body, _request_timeout=self.timeouts.api_s
            )
            return key
        except ApiException as exc:
            if exc.status != 409:
                raise ClusterError(f"cannot create Secret {API_KEY_SECRET}: {exc.reason}") from exc
        secret = self._core().read_namespaced_secret(
            API_KEY_SECRET, self.namespace, _request_timeout=self.timeouts.api_s
        )
        return base64.b64decode((secret.data or {}).get(API_KEY_SECRET_KEY, "")).decode()

    _applied_statefulsets: tuple[str, ...] = ()

    def apply(self, overlay: Path, replicas: Mapping[str, int] | None = None) -> None:
        """Render the overlay and server-side apply every object into our namespace."""
        from kubernetes import dynamic
        from kubernetes.client.exceptions import ApiException

        images = {APP_IMAGE: self.image} if self.image != APP_IMAGE else None
        objects = prepare_objects(
            render_kustomize(Path(overlay), self.timeouts.kubectl_s),
            self.namespace,
            replicas=replicas,
            images=images,
        )
        dyn = dynamic.DynamicClient(self._client())
        for obj in objects:
            kind, name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?")
            try:
                resource = dyn.resources.get(api_version=obj["apiVersion"], kind=kind)
                dyn.server_side_apply(
                    resource,
                    body=obj,
                    namespace=self.namespace if resource.namespaced else None,
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True,
                    _request_timeout=self.timeouts.api_s,
                )
            except ApiException as exc:
                raise ClusterError(f"apply {kind}/{name} failed: {exc.status} {exc.body}") from exc
            except Exception as exc:  # e.g. ResourceNotFoundError for an unknown CRD kind
                raise ClusterError(f"apply {kind}/{name} failed: {exc}") from exc
        self._applied_statefulsets = tuple(
            o["metadata"]["name"] for o in objects if o.get("kind") == "StatefulSet"
        )

    def wait_rollout(self, deployment: str = APP_DEPLOYMENT, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        why = "not read yet"
        while True:
            try:
                complete, why = rollout_status(self._read_workload(deployment))
            except ClusterError as exc:  # not created yet: keep waiting within the deadline
                complete, why = False, str(exc)
            if complete:
                return
            if time.monotonic() >= deadline:
                raise RolloutTimeout(
                    f"rollout of {deployment} in namespace {self.namespace} not complete after "
                    f"{timeout_s:g}s: {why}\n{self.diagnostics(deployment)}"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def delete_pod(self, pod: str, grace_period_s: int | None = None) -> None:
        self._core().delete_namespaced_pod(
            pod,
            self.namespace,
            grace_period_seconds=grace_period_s,
            _request_timeout=self.timeouts.api_s,
        )

    def kill_container(self, pod: str, signal_name: str = "SIGKILL") -> None:
        """Crash the pod's main container so the kubelet restarts it (restartCount rises).

        `kubectl exec POD -- kill -9 1` does not work: the kernel ignores signals sent to a PID
        namespace's init from inside it unless init handles them, and SIGKILL cannot be handled.
        So SIGKILL goes through the node's runtime (`crictl stop --timeout 0 <id>`, run with
        `minikube ssh` / `docker exec <node>`): the runtime SIGKILLs the process from outside.
        Other signals (SIGTERM, SIGINT: the app handles them) are sent from inside the
        container with the image's python. Where no node access exists (an `existing`
        cluster), SIGKILL falls back to deleting the pod with grace 0: a replacement pod, not a
        restart. :attr:`last_kill_method` says which was used.
        """
        sig = (
            signal_name.upper()
            if signal_name.upper().startswith("SIG")
            else f"SIG{signal_name.upper()}"
        )
        if sig != "SIGKILL":
            argv = kubectl_argv(
                ["exec", pod, "-c", APP_CONTAINER, "--", *signal_pid1_argv(sig)],
                kubeconfig=self.kubeconfig,
                context=self.context,
                namespace=self.namespace,
            )
            run_command(argv, self.timeouts.kubectl_s, f"send {sig} to {pod}")
            self.last_kill_method = f"kubectl exec python os.kill(1, {sig})"
            return
        v1pod = self._core().read_namespaced_pod(
            pod, self.namespace, _request_timeout=self.timeouts.api_s
        )
        container_id = container_id_of(v1pod)
        node = v1pod.spec.node_name or ""
        argv_on_node = (
            self._node_exec_argv(node, crictl_stop_argv(container_id))
            if container_id and node
            else None
        )
        if argv_on_node is None:
            log.warning(
                "%s: no node access to SIGKILL %s's container; deleting the pod with grace 0",
                self.name,
                pod,
            )
            self.delete_pod(pod, grace_period_s=0)
            self.last_kill_method = "delete grace 0 (no node access)"
            return
        run_command(argv_on_node, self.timeouts.kubectl_s, f"SIGKILL container of {pod}")
        self.last_kill_method = "crictl stop --timeout 0 on the node"

    def scale(self, deployment: str, replicas: int) -> None:
        workload = self._read_workload(deployment)
        apps = self._apps()
        patch = scale_patch(replicas)
        if _is_statefulset(workload):
            apps.patch_namespaced_stateful_set_scale(
                deployment, self.namespace, patch, _request_timeout=self.timeouts.api_s
            )
        else:
            apps.patch_namespaced_deployment_scale(
                deployment, self.namespace, patch, _request_timeout=self.timeouts.api_s
            )

    def rollout_restart(self, deployment: str = APP_DEPLOYMENT) -> None:
        workload = self._read_workload(deployment)
        apps = self._apps()
        if _is_statefulset(workload):
            apps.patch_namespaced_stateful_set(
                deployment, self.namespace, restart_patch(), _request_timeout=self.timeouts.api_s
            )
        else:
            apps.patch_namespaced_deployment(
                deployment, self.namespace, restart_patch(), _request_timeout=self.timeouts.api_s
            )

    def down(self, keep: bool = False) -> None:
        """Remove the namespace, and the cluster if this provider created it.

        With ``keep`` nothing is deleted (state stays for debugging). Every step is tried;
        failures are collected and raised together at the end.
        """
        self.close()
        if keep:
            log.info("keeping namespace %s (%s) for debugging", self.namespace, self.name)
            return
        errors: list[str] = []
        try:
            from kubernetes.client.exceptions import ApiException

            try:
                self._core().delete_namespace(self.namespace, _request_timeout=self.timeouts.api_s)
            except ApiException as exc:
                if exc.status != 404:
                    errors.append(f"delete namespace {self.namespace}: {exc.status} {exc.reason}")
        except ClusterUnavailable as exc:
            if not self.created_cluster:
                errors.append(f"delete namespace {self.namespace}: {exc}")
        except Exception as exc:
            if not self.created_cluster:  # the cluster is about to go anyway
                errors.append(f"delete namespace {self.namespace}: {exc}")
        if self.created_cluster:
            try:
                self._delete_cluster()
            except Exception as exc:
                errors.append(f"delete {self.name} cluster: {exc}")
        self._reset_client()
        if errors:
            raise ClusterError("; ".join(errors))
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()


def _is_statefulset(workload: Any) -> bool:
    from kubernetes import client

    return isinstance(workload, client.V1StatefulSet)


def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    """Does anything accept a TCP connection at host:port within timeout_s?"""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
