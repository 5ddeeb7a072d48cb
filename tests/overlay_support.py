"""The real local overlay, made to run beside another local cluster on the same machine.

The overlay pins the NodePort (31859) and chroma's loopback clusterIP (127.0.2.10:8000), so a
test cluster would clash with the session's cluster or with one a person has up. These helpers
pick free ones.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.providers.local.layout import bind_error
from harness.providers.local.manifests import render_overlay
from harness.settings import REPO_ROOT

LOCAL_OVERLAY = REPO_ROOT / "k8s" / "overlays" / "local"


def free_node_port(first: int = 31862, last: int = 31899) -> int:
    for port in range(first, last + 1):
        if bind_error("127.0.0.1", port) is None:
            return port
    raise RuntimeError(f"no free nodePort in {first}-{last} on 127.0.0.1")


def overlay_beside_others(directory: Path) -> Path:
    """The real overlay, rendered, with chroma's clusterIP moved to a free 127.0.2.x."""
    objects = render_overlay(LOCAL_OVERLAY)
    free = next(
        (f"127.0.2.{n}" for n in range(40, 250) if bind_error(f"127.0.2.{n}", 8000) is None), None
    )
    if free is None:
        raise RuntimeError("no free 127.0.2.x:8000 for chroma's clusterIP")
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Service" and name == "chroma":
            obj["spec"]["clusterIP"] = free
        if obj["kind"] == "ConfigMap" and name == "rag-api-config":
            obj["data"]["RAG_CHROMA_HOST"] = free
    path = directory / "local-overlay.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return path
