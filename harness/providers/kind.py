"""kind: a cluster in docker containers, created with a port mapping for the NodePort.

kind nodes are containers, so a nodePort is only reachable from the host when the cluster was
created with ``extraPortMappings`` (containerPort 31859 -> 127.0.0.1:31859). We create our
cluster that way; on a cluster that already existed without the mapping, the URL falls back to
``kubectl port-forward service/rag-api``. Images go in with ``kind load docker-image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.providers.kube import NODE_PORT, run_command
from harness.providers.managed import ManagedCluster


def kind_config(
    cluster_name: str,
    node_port: int = NODE_PORT,
    listen_address: str = "127.0.0.1",
    node_image: str | None = None,
) -> dict[str, Any]:
    """A kind cluster config: one control-plane node whose nodePort is published on the host.

    ``listen_address`` is loopback so the Service is not exposed beyond this machine.
    """
    node: dict[str, Any] = {
        "role": "control-plane",
        "extraPortMappings": [
            {
                "containerPort": node_port,
                "hostPort": node_port,
                "listenAddress": listen_address,
                "protocol": "TCP",
            }
        ],
    }
    if node_image:
        node["image"] = node_image
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": cluster_name,
        "nodes": [node],
    }


def kind_config_yaml(cluster_name: str, node_port: int = NODE_PORT, **kwargs: Any) -> str:
    return yaml.safe_dump(kind_config(cluster_name, node_port, **kwargs), sort_keys=False)


def parse_kind_clusters(output: str) -> list[str]:
    """``kind get clusters`` prints one name per line (and a notice on stderr when none)."""
    return [line.strip() for line in output.splitlines() if line.strip()]


class KindCluster(ManagedCluster):
    name = "kind"
    binary = "kind"
    manager_key = "kind"

    def _provider_config(self) -> Path | None:
        path = self.state_dir / f"kind-{self.cluster_name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Pin the node image only when asked: each kind release names the images it supports.
        image = f"kindest/node:v{self.k8s_version}" if self.k8s_version else None
        path.write_text(kind_config_yaml(self.cluster_name, node_image=image))
        return path

    def _cluster_exists(self) -> bool:
        proc = run_command(
            ["kind", "get", "clusters"], self.timeouts.probe_s * 3, "kind get clusters"
        )
        return self.cluster_name in parse_kind_clusters(proc.stdout)

    def _write_kubeconfig(self) -> None:
        proc = run_command(
            ["kind", "get", "kubeconfig", "--name", self.cluster_name],
            self.timeouts.probe_s * 3,
            f"kind kubeconfig of {self.cluster_name}",
        )
        self._write_file(proc.stdout)

    def _node_url(self, node_port: int) -> str | None:
        return self._docker_port_url(f"{self.cluster_name}-control-plane", node_port)
