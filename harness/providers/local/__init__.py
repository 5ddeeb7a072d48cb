"""The `local` cluster provider: Kubernetes semantics for our manifests on one machine.

- `manifests`: render an overlay, parse it, refuse what cannot be honoured.
- `supervisor`: the detached daemon (pods as processes, controllers, probes, Service proxies).
- `proxy`: the kube-proxy stand-in (L4, ready endpoints only).
- `cluster`: `LocalCluster`, the ClusterProvider talking to the daemon.
"""

from harness.providers.local.cluster import LocalCluster
from harness.providers.local.manifests import ImageMapping, ManifestError

__all__ = ["ImageMapping", "LocalCluster", "ManifestError"]
