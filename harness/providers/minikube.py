"""minikube: the default real cluster (profile ``pytest-rag-harness``, docker driver).

Created through pytest-kubernetes' minikube manager (``minikube start -p NAME --driver docker
--embed-certs --kubernetes-version vX``, plus ``--force`` as root). The Service is reached on
``http://$(minikube ip):<nodePort>``; images go in with ``minikube image load``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from harness.providers.base import ClusterError
from harness.providers.kube import run_command
from harness.providers.managed import ManagedCluster


def minikube_status_argv(profile: str) -> list[str]:
    return ["minikube", "status", "--profile", profile, "--output", "json"]


def minikube_ip_argv(profile: str) -> list[str]:
    return ["minikube", "ip", "--profile", profile]


def parse_minikube_status(output: str) -> dict[str, Any] | None:
    """``minikube status -o json`` -> the control-plane node's status (a list on multi-node)."""
    try:
        data = json.loads(output)
    except ValueError:
        return None
    if isinstance(data, list):
        data = data[0] if data else None
    return data if isinstance(data, dict) else None


def minikube_running(status: dict[str, Any] | None) -> bool:
    if not status:
        return False
    return status.get("Host") == "Running" and status.get("APIServer") == "Running"


def parse_minikube_ip(output: str) -> str:
    """The node IP ``minikube ip`` printed (its last line; minikube may print warnings first)."""
    for line in reversed(output.strip().splitlines()):
        candidate = line.strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    raise ClusterError(f"`minikube ip` printed no IP address: {output.strip()[:200]!r}")


def minikube_ssh_argv(profile: str, node: str, argv: Sequence[str]) -> list[str]:
    """Run a command as root on a minikube node.

    The first node's Kubernetes name is the profile's; others are ``<profile>-m02``..., which
    minikube itself calls ``m02``.
    """
    ssh = ["minikube", "ssh", "--profile", profile]
    if node and node != profile:
        ssh += ["--node", node.removeprefix(f"{profile}-")]
    return [*ssh, "--", "sudo", *argv]


class MinikubeCluster(ManagedCluster):
    name = "minikube"
    binary = "minikube"
    manager_key = "minikube"  # pytest-kubernetes: MinikubeDockerManager

    def _profile_status(self) -> dict[str, Any] | None:
        # minikube status exits non-zero when the profile is stopped or absent, still printing JSON
        proc = run_command(
            minikube_status_argv(self.cluster_name),
            self.timeouts.probe_s * 3,
            f"minikube status of profile {self.cluster_name}",
            check=False,
        )
        return parse_minikube_status(proc.stdout)

    def _ensure_cluster(self) -> bool:
        """``minikube start`` is idempotent on a running profile and (re)writes our kubeconfig,
        so we always go through the manager; we created the cluster if it was not running."""
        self._require_tools()
        was_running = minikube_running(self._profile_status())
        assert self.kubeconfig is not None
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self._create_with_manager()
        return not was_running

    def _node_url(self, node_port: int) -> str | None:
        proc = run_command(
            minikube_ip_argv(self.cluster_name), self.timeouts.probe_s * 3, "minikube ip"
        )
        return f"http://{parse_minikube_ip(proc.stdout)}:{node_port}"

    def _node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str] | None:
        return minikube_ssh_argv(self.cluster_name, node, argv)
