"""Clusters the harness creates and deletes itself (minikube, kind, k3d).

The lifecycle goes through pytest-kubernetes' cluster managers (`pytest_kubernetes.providers`):
they know each tool's create/delete flags and wait for the API server and the default
ServiceAccount before returning. Two of their habits are wrapped:

- they run commands with ``shell=True`` from joined strings: we only pass them names and paths
  checked by :func:`harness.providers.kube.shell_safe`, so the shell sees nothing but words;
- they update ``os.environ`` (KUBECONFIG) for good: each call goes through
  :func:`harness.providers.kube.call_with_environ_restored`.

Everything else (is the cluster there, image load, node URL, node exec) is our own code with
argument lists and timeouts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.providers.base import ClusterError
from harness.providers.images import load_image_into, require_binary
from harness.providers.kube import (
    KubeCluster,
    call_with_environ_restored,
    run_command,
    shell_safe,
)

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_NAME = "pytest-rag-harness"
DEFAULT_K8S_VERSION = "1.30.0"
# pytest-kubernetes polls the new API server's /readyz once a second, at most this many times
CLUSTER_READY_ATTEMPTS = 120


def manager_cluster_name(name: str) -> str:
    """pytest-kubernetes prefixes every cluster name with ``pytest-``; agree with it up front."""
    return name if name.startswith("pytest-") else f"pytest-{name}"


def parse_docker_port(output: str) -> str | None:
    """``docker port CONTAINER 31859/tcp`` -> ``127.0.0.1:31859`` (an IPv4 host:port).

    docker prints one line per binding (``0.0.0.0:31859``, ``[::]:31859``); a wildcard bind is
    reached on loopback.
    """
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("["):
            continue
        host, _, port = line.rpartition(":")
        if host and port.isdigit():
            return f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"  # noqa: S104
    return None


class ManagedCluster(KubeCluster):
    """A real cluster with a lifecycle: created by `up` when absent, deleted by `down` if ours."""

    binary = ""  # the tool's executable, e.g. "kind"
    manager_key = ""  # the name pytest_kubernetes.providers.select_provider_manager knows

    def __init__(
        self,
        *,
        cluster_name: str | None = None,
        k8s_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = (
            cluster_name
            or os.environ.get("HARNESS_CLUSTER_NAME")
            or self._state.get("cluster_name")
            or DEFAULT_CLUSTER_NAME
        )
        self.cluster_name = manager_cluster_name(str(name))
        self.k8s_version = k8s_version or os.environ.get("HARNESS_K8S_VERSION") or ""
        if self.kubeconfig is None:
            self.kubeconfig = self.state_dir / f"{self.name}-{self.cluster_name}.kubeconfig"

    def _state_extra(self) -> dict[str, Any]:
        return {"cluster_name": self.cluster_name}

    # -- what subclasses say -------------------------------------------------------------------
    def _cluster_exists(self) -> bool:
        raise NotImplementedError

    def _write_kubeconfig(self) -> None:
        """Write the kubeconfig of an already existing cluster to self.kubeconfig."""
        raise NotImplementedError

    def _create_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the manager's create() (e.g. ``options=[...]``)."""
        return {}

    def _provider_config(self) -> Path | None:
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def _manager(self) -> Any:
        from pytest_kubernetes.providers import select_provider_manager

        config = self._provider_config()
        manager_cls = select_provider_manager(self.manager_key)
        return call_with_environ_restored(
            manager_cls,
            cluster_name=self.cluster_name,
            provider_config=shell_safe(str(config), "provider config path") if config else None,
        )

    def _require_tools(self) -> None:
        require_binary(self.binary, f"run a {self.name} cluster")
        require_binary("docker", f"run {self.name} nodes and build the image")
        require_binary("kubectl", "render manifests and check cluster readiness")

    def _ensure_cluster(self) -> bool:
        self._require_tools()
        assert self.kubeconfig is not None
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        if self._cluster_exists():
            log.info("%s cluster %s exists; reusing it", self.name, self.cluster_name)
            self._write_kubeconfig()
            return False
        self._create_with_manager()
        return True

    def _create_with_manager(self) -> None:
        from pytest_kubernetes.options import ClusterOptions

        shell_safe(self.cluster_name, "cluster name")
        assert self.kubeconfig is not None
        shell_safe(str(self.kubeconfig), "kubeconfig path")
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        options = ClusterOptions(
            kubeconfig_path=self.kubeconfig,
            cluster_timeout=int(self.timeouts.cluster_create_s),
        )
        options.api_version = self.k8s_version or DEFAULT_K8S_VERSION
        manager = self._manager()
        log.info("creating %s cluster %s", self.name, self.cluster_name)
        call_with_environ_restored(
            manager.create,
            options,
            timeout=CLUSTER_READY_ATTEMPTS,
            **self._create_kwargs(),
        )

    def _delete_cluster(self) -> None:
        manager = self._manager()
        call_with_environ_restored(manager.delete)

    def load_image(self, image: str) -> None:
        load_image_into(self.name, image, self.cluster_name, self.timeouts.image_load_s)

    def _docker_port_url(self, container: str, node_port: int) -> str | None:
        proc = run_command(
            ["docker", "port", container, f"{node_port}/tcp"],
            self.timeouts.probe_s,
            f"find the host port of {container}",
            check=False,
        )
        address = parse_docker_port(proc.stdout) if proc.returncode == 0 else None
        return f"http://{address}" if address else None

    def _node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str] | None:
        # kind and k3d nodes are docker containers named like the Kubernetes node.
        return ["docker", "exec", node, *argv]

    def _write_file(self, text: str) -> None:
        if not text.strip():
            raise ClusterError(f"{self.name} printed an empty kubeconfig for {self.cluster_name}")
        assert self.kubeconfig is not None
        self.kubeconfig.write_text(text)
        self.kubeconfig.chmod(0o600)
