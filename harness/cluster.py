"""Which cluster this command or session talks to, and remembering it between commands.

``harness up`` picks a provider (``auto`` says why), brings it up and records the pick in
``<state_dir>/<purpose>/current.json``; ``status``, ``kill``, ``experiment`` and ``down``
read that record, so they act on the cluster ``up`` made, in another process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.providers.base import ClusterError, ClusterInfo, ClusterProvider
from harness.providers.select import create_provider, select_provider
from harness.settings import get_settings

Progress = Callable[[str], None]


@dataclass
class ClusterHandle:
    name: str
    provider: ClusterProvider
    reason: str
    where: Path
    options: dict[str, Any] = field(default_factory=dict)
    info: ClusterInfo | None = None


def _base_dir(purpose: str) -> Path:
    return get_settings().state_dir / purpose


def _provider_state_dir(base: Path, name: str) -> Path:
    # the local cluster keeps pods, logs and sockets in a directory of its own
    return base / "local" if name == "local" else base


def open_cluster(
    requested: str,
    *,
    context: str = "",
    purpose: str = "cli",
    progress: Progress | None = None,
    runtime: str = "",
) -> ClusterHandle:
    """Resolve ``requested`` (``auto`` probes minikube, kind, k3d, existing, then local).

    ``runtime`` (process|docker|auto, default the HARNESS_RUNTIME setting) is how the local
    cluster runs pods; other providers have their own and ignore it."""
    if progress and requested == "auto":
        progress("auto: probing minikube, kind, k3d, an existing context, then local")
    name, reason = select_provider(requested, context=context or None)
    options: dict[str, Any] = {}
    if context and name == "existing":
        options["context"] = context
    if name == "local":
        options["runtime"] = runtime or get_settings().runtime
    base = _base_dir(purpose)
    provider = create_provider(name, state_dir=_provider_state_dir(base, name), **options)
    return ClusterHandle(name, provider, reason, base, options)


def preflight(handle: ClusterHandle) -> tuple[bool, str]:
    """Can this cluster be reached or made here? (False, how to get one) if not."""
    try:
        return handle.provider.reachable()
    except ClusterError as exc:
        return False, str(exc)


def _record_path(purpose: str) -> Path:
    return _base_dir(purpose) / "current.json"


def save_current(handle: ClusterHandle, purpose: str = "cli") -> None:
    path = _record_path(purpose)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "provider": handle.name,
        "reason": handle.reason,
        "options": handle.options,
        "url": handle.info.url if handle.info else "",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def load_current(purpose: str = "cli") -> ClusterHandle:
    path = _record_path(purpose)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"no cluster is up (no {path}); run `harness up` first") from None
    except json.JSONDecodeError as exc:
        raise ClusterError(f"{path} is unreadable ({exc}); run `harness down` then `up`") from exc
    name = str(record["provider"])
    base = _base_dir(purpose)
    options = dict(record.get("options") or {})
    provider = create_provider(name, state_dir=_provider_state_dir(base, name), **options)
    return ClusterHandle(name, provider, str(record.get("reason", "")), base, options)


def forget_current(purpose: str = "cli", keep: bool = False) -> None:
    if not keep:
        _record_path(purpose).unlink(missing_ok=True)
