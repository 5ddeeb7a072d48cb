"""Pick and build a cluster provider by name; ``auto`` probes what this machine has.

``auto`` tries, in order: minikube, kind, k3d, an existing reachable kubeconfig context, and
finally ``local``. Each probe is read-only, fast and bounded (``shutil.which`` first, then one
short command or API call with a timeout), and the reason string lists every probe made, e.g.
``minikube: binary not found; kind: binary not found; k3d: binary not found; existing: no
kubeconfig (...); picked local: no Kubernetes reachable``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.providers.base import PROVIDER_NAMES, ClusterError, ClusterProvider
from harness.providers.images import docker_engine_answers
from harness.providers.k3d import parse_k3d_cluster_list
from harness.providers.kind import parse_kind_clusters
from harness.providers.kube import KubeTimeouts, run_command
from harness.providers.managed import DEFAULT_CLUSTER_NAME, manager_cluster_name
from harness.providers.minikube import (
    minikube_running,
    minikube_status_argv,
    parse_minikube_status,
)

VALID_CLUSTER_NAMES = ("auto", *PROVIDER_NAMES)
AUTO_ORDER = ("minikube", "kind", "k3d", "existing")


class UnknownProvider(ClusterError, ValueError):
    """A --cluster value that names no provider."""


def check_provider_name(name: str) -> str:
    normalized = (name or "").strip().lower()
    if normalized not in VALID_CLUSTER_NAMES:
        raise UnknownProvider(
            f"unknown cluster provider {name!r}; valid names: {', '.join(VALID_CLUSTER_NAMES)}"
        )
    return normalized


@dataclass(frozen=True)
class Probe:
    """What one auto-selection probe found."""

    name: str
    usable: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


class _Docker:
    """Asks the Docker engine once per selection, only if a probe needs it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._answer: tuple[bool, str] | None = None

    def answers(self) -> tuple[bool, str]:
        if self._answer is None:
            self._answer = docker_engine_answers(self.timeout_s)
        return self._answer


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def probe_minikube(cluster_name: str, timeout_s: float, docker: _Docker) -> Probe:
    if shutil.which("minikube") is None:
        return Probe("minikube", False, "binary not found")
    try:
        proc = run_command(
            minikube_status_argv(cluster_name), timeout_s, "minikube status", check=False
        )
    except ClusterError as exc:
        return Probe("minikube", False, str(exc))
    if minikube_running(parse_minikube_status(proc.stdout)):
        return Probe("minikube", True, f"profile {cluster_name} running")
    ok, version = docker.answers()
    if ok:
        return Probe(
            "minikube", True, f"profile {cluster_name} not running; docker {version} can start it"
        )
    return Probe("minikube", False, f"profile {cluster_name} not running and {version}")


def _probe_docker_tool(
    name: str,
    argv: list[str],
    parse: Callable[[str], list[str]],
    cluster_name: str,
    timeout_s: float,
    docker: _Docker,
) -> Probe:
    if shutil.which(name) is None:
        return Probe(name, False, "binary not found")
    try:
        proc = run_command(argv, timeout_s, " ".join(argv), check=False)
    except ClusterError as exc:
        return Probe(name, False, str(exc))
    if proc.returncode == 0 and cluster_name in parse(proc.stdout):
        return Probe(name, True, f"cluster {cluster_name} exists")
    ok, version = docker.answers()
    if ok:
        return Probe(name, True, f"no cluster {cluster_name}; docker {version} can create it")
    listed = "" if proc.returncode == 0 else f" (`{' '.join(argv)}`: {_last_line(proc.stderr)})"
    return Probe(name, False, f"cannot create a cluster: {version}{listed}")


def probe_kind(cluster_name: str, timeout_s: float, docker: _Docker) -> Probe:
    return _probe_docker_tool(
        "kind", ["kind", "get", "clusters"], parse_kind_clusters, cluster_name, timeout_s, docker
    )


def probe_k3d(cluster_name: str, timeout_s: float, docker: _Docker) -> Probe:
    return _probe_docker_tool(
        "k3d",
        ["k3d", "cluster", "list", "--output", "json"],
        parse_k3d_cluster_list,
        cluster_name,
        timeout_s,
        docker,
    )


def kubeconfig_candidates() -> list[Path]:
    """The files the kubernetes client would read: $KUBECONFIG's entries, else ~/.kube/config."""
    raw = os.environ.get("KUBECONFIG", "")
    if raw:
        return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def probe_existing(timeout_s: float, context: str | None = None) -> Probe:
    from kubernetes import client, config

    files = [p for p in kubeconfig_candidates() if p.is_file()]
    if not files:
        where = ", ".join(str(p) for p in kubeconfig_candidates())
        return Probe("existing", False, f"no kubeconfig ({where} missing)")
    try:
        api_client = config.new_client_from_config(config_file=str(files[0]), context=context)
    except Exception as exc:
        return Probe("existing", False, f"kubeconfig {files[0]} unusable: {exc}")
    try:
        _, active = config.list_kube_config_contexts(config_file=str(files[0]))
        name = context or (active or {}).get("name", "?")
        host = api_client.configuration.host
        try:
            version = client.VersionApi(api_client).get_code(_request_timeout=timeout_s)
        except Exception as exc:
            return Probe(
                "existing",
                False,
                f"context {name} ({host}) not reachable within {timeout_s:g}s: "
                f"{type(exc).__name__}",
            )
        return Probe("existing", True, f"context {name} reachable ({version.git_version})")
    finally:
        api_client.close()


def select_provider(
    requested: str = "auto",
    *,
    cluster_name: str | None = None,
    context: str | None = None,
    timeout_s: float | None = None,
) -> tuple[str, str]:
    """(provider name, reason). A named provider is returned as is (after validation)."""
    name = check_provider_name(requested)
    if name != "auto":
        return name, f"{name}: requested"
    timeout = timeout_s or KubeTimeouts.from_env().probe_s
    cluster = manager_cluster_name(
        cluster_name or os.environ.get("HARNESS_CLUSTER_NAME") or DEFAULT_CLUSTER_NAME
    )
    docker = _Docker(timeout)
    probes: dict[str, Callable[[], Probe]] = {
        "minikube": lambda: probe_minikube(cluster, timeout, docker),
        "kind": lambda: probe_kind(cluster, timeout, docker),
        "k3d": lambda: probe_k3d(cluster, timeout, docker),
        "existing": lambda: probe_existing(timeout, context),
    }
    seen: list[str] = []
    for candidate in AUTO_ORDER:
        probe = probes[candidate]()
        seen.append(str(probe))
        if probe.usable:
            return candidate, "; ".join([*seen, f"picked {candidate}"])
    return "local", "; ".join([*seen, "picked local: no Kubernetes reachable"])


def create_provider(name: str, *, state_dir: Path | None = None, **options: Any) -> ClusterProvider:
    """A provider instance by name (not ``auto``: resolve it with select_provider first).

    ``options`` go to the provider's constructor: for real clusters e.g. ``kubeconfig``,
    ``context``, ``namespace``, ``overlay``, ``image``, ``build_image``, ``cluster_name``,
    ``k8s_version``, ``node_address``; for ``local`` e.g. ``runtime``.
    """
    normalized = check_provider_name(name)
    if normalized == "auto":
        raise UnknownProvider("'auto' is not a provider; call select_provider('auto') first")
    if normalized == "local":
        from harness.providers.local import LocalCluster  # lazy: it pulls in the supervisor

        return LocalCluster(state_dir=state_dir, **options)
    if normalized == "minikube":
        from harness.providers.minikube import MinikubeCluster

        return MinikubeCluster(state_dir=state_dir, **options)
    if normalized == "kind":
        from harness.providers.kind import KindCluster

        return KindCluster(state_dir=state_dir, **options)
    if normalized == "k3d":
        from harness.providers.k3d import K3dCluster

        return K3dCluster(state_dir=state_dir, **options)
    from harness.providers.existing import ExistingCluster

    return ExistingCluster(state_dir=state_dir, **options)


def resolve_provider(
    requested: str = "auto", *, state_dir: Path | None = None, **options: Any
) -> tuple[ClusterProvider, str]:
    """select_provider + create_provider: the provider to use and why it was picked."""
    name, reason = select_provider(
        requested,
        cluster_name=options.get("cluster_name"),
        context=options.get("context"),
    )
    if name == "local":
        options = {k: v for k, v in options.items() if k in ("runtime",)}
    elif name == "existing":
        options = {k: v for k, v in options.items() if k not in ("cluster_name", "k8s_version")}
    else:
        options = {k: v for k, v in options.items() if k not in ("node_address", "runtime")}
    return create_provider(name, state_dir=state_dir, **options), reason
