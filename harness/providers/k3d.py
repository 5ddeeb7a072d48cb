"""k3d: k3s in docker containers, created with the nodePort published on loopback.

Created with ``--port 127.0.0.1:31859:31859@server:0`` so ``http://127.0.0.1:31859`` reaches the
Service; on a cluster that existed without it, the URL falls back to port-forward. Images go
in with ``k3d image import -c``.
"""

from __future__ import annotations

import json
from typing import Any

from harness.providers.kube import NODE_PORT, run_command
from harness.providers.managed import ManagedCluster


def k3d_port_option(node_port: int = NODE_PORT, listen_address: str = "127.0.0.1") -> list[str]:
    """k3d's ``--port [HOST:][HOSTPORT:]CONTAINERPORT@NODEFILTER``, straight to the server node."""
    return ["--port", f"{listen_address}:{node_port}:{node_port}@server:0"]


def parse_k3d_cluster_list(output: str) -> list[str]:
    """Names from ``k3d cluster list --output json``."""
    try:
        data = json.loads(output or "[]")
    except ValueError:
        return []
    return [str(c.get("name")) for c in data if isinstance(c, dict) and c.get("name")]


def k3d_server_node(cluster_name: str, index: int = 0) -> str:
    return f"k3d-{cluster_name}-server-{index}"


class K3dCluster(ManagedCluster):
    name = "k3d"
    binary = "k3d"
    manager_key = "k3d"

    def _create_kwargs(self) -> dict[str, Any]:
        return {"options": k3d_port_option()}

    def _cluster_exists(self) -> bool:
        proc = run_command(
            ["k3d", "cluster", "list", "--output", "json"],
            self.timeouts.probe_s * 3,
            "k3d cluster list",
        )
        return self.cluster_name in parse_k3d_cluster_list(proc.stdout)

    def _write_kubeconfig(self) -> None:
        proc = run_command(
            ["k3d", "kubeconfig", "get", self.cluster_name],
            self.timeouts.probe_s * 3,
            f"k3d kubeconfig of {self.cluster_name}",
        )
        self._write_file(proc.stdout)

    def _node_url(self, node_port: int) -> str | None:
        return self._docker_port_url(k3d_server_node(self.cluster_name), node_port)
