"""The cluster-provider interface every provider implements.

Everything above this module (deploy, e2e, chaos, reports, CLI) is written once
against it. Read-only probes (:class:`ClusterProbe`) are kept apart from the
actions that change the cluster (:class:`ClusterActions`), so a caller that only
observes cannot disrupt by mistake.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

PROVIDER_NAMES = ("local", "minikube", "kind", "k3d", "existing")
KillMode = Literal["delete", "crash"]


class ClusterError(RuntimeError):
    """A cluster operation failed; the message names the cause and the fix."""


class ClusterUnavailable(ClusterError):
    """The chosen cluster cannot be reached or created here (preflight failure)."""


class RolloutTimeout(ClusterError):
    """A rollout or readiness wait ran out; the message carries diagnostics."""


@dataclass(frozen=True)
class PodInfo:
    """One pod as the harness sees it. Times are epoch seconds (UTC)."""

    name: str
    uid: str
    phase: str  # Pending | Running | Succeeded | Failed | Terminating
    ready: bool
    restarts: int
    created: float
    app: str = ""  # the pod's `app` label (rag-api, chroma, ...)
    ip: str = ""
    node: str = ""
    ready_since: float | None = None
    deleting: bool = False
    last_termination_reason: str = ""  # e.g. Error, OOMKilled, Completed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClusterEvent:
    """A change seen by a watch: a pod added/modified/deleted or endpoints changed."""

    kind: Literal["pod", "endpoints"]
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    at: float  # epoch seconds, from the provider's clock or the cluster's
    monotonic: float  # time.monotonic() on the harness machine when seen
    pod: PodInfo | None = None
    endpoints: tuple[str, ...] = ()  # ready addresses "ip:port" (kind == "endpoints")


@dataclass
class ClusterInfo:
    """What `up` reports: enough to reach and drive the deployment."""

    provider: str
    url: str  # the Service's NodePort URL, e.g. http://127.0.0.1:31859
    api_key: str  # the key the deployment's writes need ("" if none)
    namespace: str
    deployment: str = "rag-api"
    replicas: int = 2
    reason: str = ""  # why this provider was picked (auto selection)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClusterProbe(abc.ABC):
    """Read-only view of a cluster. Never changes anything."""

    @abc.abstractmethod
    def reachable(self) -> tuple[bool, str]:
        """(True, "") when the cluster answers; else (False, how to get one)."""

    @abc.abstractmethod
    def list_pods(self, app: str = "rag-api") -> list[PodInfo]:
        """Pods with the label app=<app>, including terminating ones."""

    @abc.abstractmethod
    def endpoints(self, service: str = "rag-api") -> list[str]:
        """Ready endpoint addresses ("ip:port") of a Service."""

    @abc.abstractmethod
    def watch(self, stop_after_s: float, app: str = "rag-api") -> Iterator[ClusterEvent]:
        """Pod and endpoint changes, as they happen, for at most stop_after_s seconds."""

    @abc.abstractmethod
    def service_url(self, service: str = "rag-api") -> str:
        """The base URL that reaches the Service from this machine (its NodePort)."""

    @abc.abstractmethod
    def pod_url(self, pod: str) -> str:
        """A base URL that reaches one pod directly (port-forward on real clusters)."""

    @abc.abstractmethod
    def pod_logs(self, pod: str, tail: int = 100) -> str:
        """The last lines a pod's container wrote."""

    @abc.abstractmethod
    def desired_replicas(self, deployment: str = "rag-api") -> int:
        """spec.replicas of a Deployment (or StatefulSet)."""

    @abc.abstractmethod
    def diagnostics(self, app: str = "rag-api") -> str:
        """Pod phases, recent events and last log lines: for timeout messages."""


class ClusterActions(abc.ABC):
    """Operations that change the cluster."""

    @abc.abstractmethod
    def up(self, replicas: int = 2) -> ClusterInfo:
        """Create or start the cluster, make the image available, deploy, wait for rollout."""

    @abc.abstractmethod
    def down(self, keep: bool = False) -> None:
        """Remove what `up` made (only the namespace on an existing cluster)."""

    @abc.abstractmethod
    def load_image(self, image: str) -> None:
        """Make a locally built image available to the cluster's nodes."""

    @abc.abstractmethod
    def apply(self, overlay: Path) -> None:
        """Apply the manifests rendered from a kustomize overlay directory."""

    @abc.abstractmethod
    def wait_rollout(self, deployment: str = "rag-api", timeout_s: float = 120.0) -> None:
        """Block until observedGeneration >= generation and readyReplicas == replicas.
        Raises RolloutTimeout with diagnostics."""

    @abc.abstractmethod
    def delete_pod(self, pod: str, grace_period_s: int | None = None) -> None:
        """Graceful delete: out of endpoints, preStop, SIGTERM, grace, SIGKILL."""

    @abc.abstractmethod
    def kill_container(self, pod: str, signal_name: str = "SIGKILL") -> None:
        """Kill the pod's main container process hard (a crash); the kubelet restarts it."""

    @abc.abstractmethod
    def scale(self, deployment: str, replicas: int) -> None:
        """Set spec.replicas of a Deployment or StatefulSet."""

    @abc.abstractmethod
    def rollout_restart(self, deployment: str = "rag-api") -> None:
        """Start a rolling restart (like `kubectl rollout restart`); does not wait."""


class ClusterProvider(ClusterProbe, ClusterActions, abc.ABC):
    """A provider is both; callers that only observe should type against ClusterProbe."""

    name: str = ""
