"""Fault actions through the provider interface, each verified to have happened.

``kill_pods`` backs ``harness kill``; the chaos experiments use the same pieces with a
watch and a request timeline for finer figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.providers.base import ClusterError, ClusterProvider, PodInfo
from harness.settings import get_settings

Progress = Callable[[str], None]
KNOWN_APPS = ("rag-api", "chroma", "ollama")
WORKLOAD_OF_APP = {"rag-api": "rag-api", "chroma": "chroma", "ollama": "ollama"}


@dataclass(frozen=True)
class Snapshot:
    """Pods of one app at an instant: what a fault is verified against."""

    at: float
    pods: tuple[PodInfo, ...]

    @property
    def uids(self) -> set[str]:
        return {pod.uid for pod in self.pods}

    def restarts(self) -> dict[str, int]:
        return {pod.uid: pod.restarts for pod in self.pods}


def snapshot(provider: ClusterProvider, app: str) -> Snapshot:
    return Snapshot(time.time(), tuple(provider.list_pods(app)))


def select_targets(
    provider: ClusterProvider, count: int, target: str = ""
) -> tuple[str, list[PodInfo]]:
    """Pick the pods to kill: a named pod, ``count`` pods of an app, or of rag-api."""
    if target and target not in KNOWN_APPS:
        named = provider.list_pods("rag-api") + provider.list_pods("chroma")
        chosen = [pod for pod in named if pod.name == target]
        if not chosen:
            names = ", ".join(pod.name for pod in named) or "(none)"
            raise ClusterError(f"no pod named {target!r}; pods are: {names}")
        return chosen[0].app or "rag-api", chosen
    app = target or "rag-api"
    pods = [pod for pod in provider.list_pods(app) if not pod.deleting]
    if not pods:
        raise ClusterError(f"no running {app} pods to kill; is the cluster up (harness status)?")
    if count > len(pods):
        raise ClusterError(f"--count {count} is more than the {len(pods)} running {app} pods")
    return app, sorted(pods, key=lambda pod: pod.name)[:count]


def inject(provider: ClusterProvider, mode: str, pods: list[PodInfo]) -> float:
    """Delete (graceful) or crash (SIGKILL) each pod; returns the fault's epoch time."""
    fault_at = time.time()
    for pod in pods:
        if mode == "delete":
            provider.delete_pod(pod.name)
        elif mode == "crash":
            provider.kill_container(pod.name, "SIGKILL")
        else:
            raise ClusterError(f"unknown kill mode {mode!r}; use delete or crash")
    return fault_at


def fault_verified(before: Snapshot, after: Snapshot, victims: list[PodInfo]) -> bool:
    """Every victim is gone (uid replaced) or its container restarted."""
    now = {pod.uid: pod for pod in after.pods}
    for victim in victims:
        survivor = now.get(victim.uid)
        # a pod on its way out (terminating) counts as hit: Kubernetes no longer counts it
        if survivor is not None and not survivor.deleting and survivor.restarts <= victim.restarts:
            return False
    return True


def wait_recovered(
    provider: ClusterProvider,
    app: str,
    before: Snapshot,
    victims: list[PodInfo],
    fault_at: float,
    timeout_s: float,
    interval_s: float = 0.05,
) -> dict[str, Any]:
    """Poll until the fault is visible and every desired replica is Ready again.

    Returns rescheduling_s (fault -> replacement exists or container restarted),
    readiness_s (that -> Ready) and total_s (fault -> all desired replicas Ready).
    """
    workload = WORKLOAD_OF_APP.get(app, app)
    desired = provider.desired_replicas(workload)
    victim_uids = {pod.uid for pod in victims}
    deadline = time.monotonic() + timeout_s
    rescheduled_at: float | None = None
    replacement_ready_at: float | None = None
    last: Snapshot = before
    while time.monotonic() < deadline:
        last = snapshot(provider, app)
        live = [pod for pod in last.pods if not pod.deleting]
        fresh = [pod for pod in live if pod.uid not in before.uids]
        restarted = [
            pod
            for pod in live
            if pod.uid in victim_uids and pod.restarts > before.restarts().get(pod.uid, 0)
        ]
        changed = fresh or restarted
        if changed and rescheduled_at is None:
            rescheduled_at = last.at
        if changed and replacement_ready_at is None and any(p.ready for p in changed):
            replacement_ready_at = last.at
        all_ready = len(live) == desired and all(pod.ready for pod in live)
        if rescheduled_at is not None and all_ready and fault_verified(before, last, victims):
            return {
                "recovered": True,
                "rescheduling_s": round(rescheduled_at - fault_at, 3),
                "readiness_s": round((replacement_ready_at or last.at) - rescheduled_at, 3),
                "total_s": round(last.at - fault_at, 3),
                "desired_replicas": desired,
                "pods_after": [pod.name for pod in live],
            }
        time.sleep(interval_s)
    return {
        "recovered": False,
        "rescheduling_s": None if rescheduled_at is None else round(rescheduled_at - fault_at, 3),
        "readiness_s": None,
        "total_s": None,
        "desired_replicas": desired,
        "pods_after": [f"{p.name}({p.phase},ready={p.ready})" for p in last.pods],
        "diagnostics": provider.diagnostics(app),
    }


def kill_pods(
    provider: ClusterProvider,
    *,
    mode: str,
    count: int,
    target: str = "",
    wait: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    app, victims = select_targets(provider, count, target)
    before = snapshot(provider, app)
    if progress:
        progress(f"{mode}: {', '.join(pod.name for pod in victims)}")
    fault_at = inject(provider, mode, victims)
    outcome: dict[str, Any] = {
        "mode": mode,
        "app": app,
        "killed": [pod.name for pod in victims],
        "killed_uids": [pod.uid for pod in victims],
    }
    if wait:
        if progress:
            progress(f"waiting for {app} to recover (at most {get_settings().rollout_timeout_s}s)")
        outcome |= wait_recovered(
            provider, app, before, victims, fault_at, get_settings().rollout_timeout_s
        )
    return outcome
