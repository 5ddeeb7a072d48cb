"""Manifests for a stand-in workload: a rag-api Deployment of one container and its NodePort
Service, as the local cluster reads them. Used by the tests and benchmarks that exercise the
cluster machinery without the real service (fast, no chroma)."""

from __future__ import annotations

from typing import Any


def deployment_and_service(
    container: dict[str, Any],
    node_port: int,
    *,
    replicas: int = 2,
    grace_s: int = 5,
    strategy: dict[str, Any] | None = None,
    pod_spec: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Deployment `rag-api` (label app=rag-api) running `container`, and Service `rag-api`
    (port 80 -> the container's `http` port) on `node_port`."""
    spec = pod_spec or {"terminationGracePeriodSeconds": grace_s, "containers": [container]}
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "rag-api"}},
        "template": {"metadata": {"labels": {"app": "rag-api"}}, "spec": spec},
    }
    if strategy is not None:
        deployment_spec["strategy"] = strategy
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "rag-api"},
            "spec": deployment_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "rag-api"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "rag-api"},
                "ports": [{"port": 80, "targetPort": "http", "nodePort": node_port}],
            },
        },
    ]
