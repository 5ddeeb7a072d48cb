"""existing: any cluster a kubeconfig context reaches. Nothing is created or deleted but the
session's namespace.

No image is built or loaded: the cluster must be able to pull the image, so push it to a
registry the nodes reach and set ``HARNESS_IMAGE`` (it replaces ``rag-api:dev`` in the rendered
manifests). The Service is reached on a node's address + nodePort when that answers from here,
else through ``kubectl port-forward service/rag-api``. A hard container kill has no node access
here and falls back to deleting the pod with grace 0 (see ``KubeCluster.kill_container``).
"""

from __future__ import annotations

import os
from typing import Any

from harness.providers.base import ClusterError
from harness.providers.kube import KubeCluster, pick_node_address, tcp_reachable

ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def node_address_order(prefer: str = "InternalIP") -> tuple[str, ...]:
    """Address types to try, the preferred one first (``HARNESS_NODE_ADDRESS``)."""
    if prefer not in ADDRESS_TYPES:
        raise ClusterError(f"node address type {prefer!r} unknown; use one of {ADDRESS_TYPES}")
    return (prefer, *(t for t in ADDRESS_TYPES if t != prefer))


class ExistingCluster(KubeCluster):
    name = "existing"
    build_image_by_default = False

    def __init__(self, *, node_address: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_address_order = node_address_order(
            node_address or os.environ.get("HARNESS_NODE_ADDRESS") or "InternalIP"
        )

    def _node_url(self, node_port: int) -> str | None:
        nodes = self._core().list_node(_request_timeout=self.timeouts.api_s).items
        address = pick_node_address(nodes, self.node_address_order)
        if address and tcp_reachable(address, node_port, self.timeouts.probe_s):
            host = f"[{address}]" if ":" in address else address
            return f"http://{host}:{node_port}"
        return None  # nodes not reachable from here: port-forward the Service
