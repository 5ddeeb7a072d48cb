"""Chaos experiments: a fault injected under Locust load, observed to the request.

Each experiment declares what it disrupts (``inject``) and which pods it watches; the run
is the same for all: pods and endpoints watched, Locust started as a subprocess, the fault
injected ``fault_at_s`` into the load, recovery awaited, the load finished, figures computed
from the request timeline and the pod events, SLOs checked, report written.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import cluster as clusters
from harness import faults
from harness.load import start_load
from harness.measure import pod_metrics, request_metrics
from harness.providers.base import ClusterError, ClusterEvent, ClusterProvider, PodInfo
from harness.report import (
    FaultInfo,
    build_report,
    comparison_markdown,
    summary_text,
    write_report,
)
from harness.settings import get_settings
from harness.slo import slo_for
from harness.waiting import wait_for

Progress = Callable[[str], None]
__all__ = [
    "DEFAULT_RUN",
    "EXPERIMENTS",
    "ExperimentResult",
    "run_experiment",
    "run_tutorial_comparison",
    "summary_text",
]


@dataclass
class FaultContext:
    """What an injection needs: the provider, the pods before, and per-run hooks."""

    provider: ClusterProvider
    replicas: int
    pods_before: list[PodInfo]
    progress: Progress
    llm_killer: Callable[[], str] | None = None
    freeze_s: float = 2.0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    inject: Callable[[FaultContext], FaultInfo]
    app: str = "rag-api"  # whose pods the fault disrupts and whose recovery is timed
    all_replaced: bool = False  # recovered only when no pod from before remains
    touches_pods: bool = True


def _victim(ctx: FaultContext) -> PodInfo:
    # the pod that restarted least: crashing the same container again would measure the
    # kubelet's restart back-off (10 s, 20 s, ...), not the recovery
    ready = sorted(
        (p for p in ctx.pods_before if p.ready and not p.deleting),
        key=lambda p: (p.restarts, p.name),
    )
    if not ready:
        raise ClusterError("no ready rag-api pod to disrupt; is the deployment healthy?")
    return ready[0]


def _pod_delete(ctx: FaultContext) -> FaultInfo:
    victim = _victim(ctx)
    at = time.time()
    ctx.provider.delete_pod(victim.name)
    return FaultInfo("delete", victim.name, at)


def _pod_delete_all(ctx: FaultContext) -> FaultInfo:
    at = time.time()
    names = [pod.name for pod in ctx.pods_before if not pod.deleting]
    for name in names:
        ctx.provider.delete_pod(name)
    return FaultInfo("delete-all", ",".join(names), at)


def _pod_crash(ctx: FaultContext) -> FaultInfo:
    victim = _victim(ctx)
    at = time.time()
    ctx.provider.kill_container(victim.name, "SIGKILL")
    return FaultInfo("crash", victim.name, at)


def _oom_kill(ctx: FaultContext) -> FaultInfo:
    breach = getattr(ctx.provider, "breach_memory_limit", None)
    if breach is None:
        raise ClusterError(
            f"{type(ctx.provider).__name__} cannot breach a memory limit (the local cluster "
            "with --runtime docker can)"
        )
    victim = _victim(ctx)
    at = time.time()
    ctx.notes["memory_breach"] = breach(victim.name)
    return FaultInfo("oom-kill", victim.name, at)


def _chroma_kill(ctx: FaultContext) -> FaultInfo:
    pods = [pod for pod in ctx.pods_before if not pod.deleting]
    if not pods:
        raise ClusterError("no chroma pod to kill; is the chroma StatefulSet up?")
    at = time.time()
    for pod in pods:
        ctx.provider.delete_pod(pod.name, grace_period_s=0)
    return FaultInfo("delete-force", ",".join(pod.name for pod in pods), at)


def _llm_kill(ctx: FaultContext) -> FaultInfo:
    if ctx.llm_killer is not None:
        at = time.time()
        target = ctx.llm_killer()
        return FaultInfo("llm-kill", target, at)
    ollama = [pod for pod in ctx.provider.list_pods("ollama") if not pod.deleting]
    if not ollama:
        raise ClusterError(
            "llm-kill needs an LLM backend to kill: the cluster has no ollama pods and no "
            "LLM process was handed to the experiment. On the local cluster, run Ollama on "
            "the host at 127.0.0.1:11434 (the service uses it), or skip this experiment."
        )
    at = time.time()
    ctx.provider.scale("ollama", 0)
    return FaultInfo("llm-kill", "deployment/ollama", at)


def _scale_zero(ctx: FaultContext) -> FaultInfo:
    at = time.time()
    ctx.provider.scale("rag-api", 0)
    ctx.notes["fault_acknowledged_at"] = time.time()
    wait_for(
        lambda: not ctx.provider.list_pods("rag-api"),
        timeout_s=get_settings().rollout_timeout_s,
        what="every rag-api pod gone after scaling to zero",
        describe=lambda: ctx.provider.diagnostics("rag-api"),
    )
    ctx.notes["zero_at"] = time.time()
    ctx.provider.scale("rag-api", ctx.replicas)
    return FaultInfo("scale-zero", f"deployment/rag-api 0 -> {ctx.replicas}", at)


def _rolling_restart(ctx: FaultContext) -> FaultInfo:
    at = time.time()
    ctx.provider.rollout_restart("rag-api")
    return FaultInfo("rolling-restart", "deployment/rag-api", at)


def _pod_freeze(ctx: FaultContext) -> FaultInfo:
    freeze_pods = getattr(ctx.provider, "freeze_pods", None)
    if freeze_pods is None:
        raise ClusterError(f"{type(ctx.provider).__name__} cannot freeze pods (local only)")
    names = [pod.name for pod in ctx.pods_before if not pod.deleting]
    at = time.time()
    # one step for every pod: the outage starts when the last pod stops, so stop them together
    done = freeze_pods(names, ctx.freeze_s)
    ctx.notes["fault_acknowledged_at"] = time.time()
    ctx.notes["injected_outage_s"] = ctx.freeze_s
    ctx.notes["frozen_at"] = done.get("stopped_at")
    return FaultInfo("freeze", ",".join(names), at)


EXPERIMENTS: dict[str, ExperimentSpec] = {
    spec.name: spec
    for spec in (
        ExperimentSpec("pod-delete", "delete one rag-api pod gracefully", _pod_delete),
        ExperimentSpec("pod-delete-all", "delete every rag-api pod at once", _pod_delete_all,
                       all_replaced=True),
        ExperimentSpec("pod-crash", "SIGKILL one rag-api container (a crash)", _pod_crash),
        ExperimentSpec("oom-kill", "breach one rag-api container's memory limit (docker)",
                       _oom_kill),
        ExperimentSpec("chroma-kill", "kill the chroma pod (grace 0)", _chroma_kill,
                       app="chroma"),
        ExperimentSpec("llm-kill", "kill the LLM backend", _llm_kill, app="ollama",
                       touches_pods=False),
        ExperimentSpec("scale-zero", "scale rag-api to 0 and back", _scale_zero,
                       all_replaced=True),
        ExperimentSpec("rolling-restart", "rollout restart of rag-api", _rolling_restart,
                       all_replaced=True),
        ExperimentSpec("pod-freeze", "SIGSTOP every rag-api pod for a set time (local)",
                       _pod_freeze, touches_pods=False),
    )
}  # fmt: skip
# what `harness run` runs by default: the scenarios every provider supports
DEFAULT_RUN = ("pod-delete", "pod-crash", "pod-delete-all", "chroma-kill", "rolling-restart",
               "scale-zero")  # fmt: skip


@dataclass
class ExperimentResult:
    report: dict[str, Any]
    directory: Path
    events: list[ClusterEvent]


class _Watcher:
    """Collects the provider's pod and endpoint events in a thread, for a bounded time."""

    def __init__(self, provider: ClusterProvider, app: str, max_s: float) -> None:
        self.events: list[ClusterEvent] = []
        self.error: BaseException | None = None
        self._provider, self._app, self._max_s = provider, app, max_s
        self._thread = threading.Thread(target=self._run, name=f"watch-{app}", daemon=True)

    def _run(self) -> None:
        try:
            for event in self._provider.watch(stop_after_s=self._max_s, app=self._app):
                self.events.append(event)
        except Exception as exc:  # reported with the experiment, never swallowed
            self.error = exc

    def start(self) -> _Watcher:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(timeout=self._max_s + 10)


def _unique_dir(base: Path, name: str) -> Path:
    candidate = base / name
    index = 2
    while candidate.exists():
        candidate = base / f"{name}-{index}"
        index += 1
    candidate.mkdir(parents=True)
    return candidate


def run_experiment(
    handle: clusters.ClusterHandle,
    name: str,
    *,
    users: int,
    duration_s: float,
    out_dir: Path,
    progress: Progress,
    slo_overrides: Mapping[str, Any] | None = None,
    fault_at_s: float | None = None,
    rate_per_s: float | None = None,
    llm_killer: Callable[[], str] | None = None,
    freeze_s: float = 2.0,
    label: str = "",
    workers: int = 0,
    informational: bool = False,
) -> ExperimentResult:
    """Run one experiment on a cluster that is up; write its report under ``out_dir``.
    ``workers`` > 0 runs Locust distributed with that many local worker processes.
    ``informational``: a run kept for its figures (the tutorial's), shown as ``INFO`` rather
    than as a pass in summaries; its remaining checks (the fault verified) still count."""
    if name not in EXPERIMENTS:
        raise ClusterError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    spec = EXPERIMENTS[name]
    settings = get_settings()
    slo = slo_for(name, slo_overrides)
    provider = handle.provider
    fault_after = fault_at_s if fault_at_s is not None else settings.fault_at_s
    if duration_s < fault_after + 3:
        raise ClusterError(
            f"--duration {duration_s:g}s leaves no time after the fault at {fault_after:g}s; "
            f"use at least {fault_after + 3:g}s"
        )
    progress(f"{name}: checking the deployment is healthy before the fault")
    provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
    replicas = provider.desired_replicas("rag-api")
    url = provider.service_url("rag-api")
    api_key = handle.info.api_key if handle.info else str(getattr(provider, "api_key", ""))
    directory = _unique_dir(out_dir, label or name)
    watch_app = spec.app if spec.touches_pods else "rag-api"
    pods_before = provider.list_pods(watch_app)
    desired = provider.desired_replicas(watch_app) if spec.touches_pods else replicas
    watcher = _Watcher(provider, watch_app, duration_s + 5).start()
    rate = rate_per_s or settings.load_rate_per_s
    ctx = FaultContext(provider, replicas, pods_before, progress, llm_killer, freeze_s)
    progress(f"{name}: load {users} users at ~{rate:.0f} req/s for {duration_s:.0f}s on {url}")
    load = start_load(
        url,
        directory / "load",
        users=users,
        duration_s=round(duration_s),
        user_rps=rate / users,
        api_key=api_key,
        allow_non_loopback=not url.startswith(("http://127.", "http://localhost")),
        workers=workers,
    )
    fault: FaultInfo | None = None
    recovery: dict[str, Any] = {}
    try:
        load.wait_for_requests(5, timeout_s=30)
        time.sleep(max(0.0, fault_after - 1.0))
        progress(f"{name}: injecting the fault ({spec.description})")
        fault = spec.inject(ctx)
        ctx.notes.setdefault("fault_acknowledged_at", time.time())
        if spec.touches_pods:
            recovery = faults.wait_recovered(
                provider,
                spec.app,
                faults.Snapshot(fault.at, tuple(pods_before)),
                _victims(spec, pods_before, fault),
                fault.at,
                timeout_s=max(5.0, duration_s - fault_after),
            )
            progress(
                f"{name}: recovered={recovery.get('recovered')} "
                f"total={recovery.get('total_s')}s; load continues to the end"
            )
        result = load.wait()
    finally:
        load.stop()
        watcher.join()
    ended = time.time()
    if watcher.error is not None:
        progress(f"{name}: the watch failed: {watcher.error!r}")
    assert fault is not None
    pods = (
        pod_metrics(watcher.events, fault.at, desired, pods_before, spec.app, spec.all_replaced)
        if spec.touches_pods
        else None
    )
    requests = request_metrics(
        result.records,
        fault.at,
        pods.recovered_at if pods else None,
        fault_acknowledged_at=ctx.notes.get("fault_acknowledged_at"),
    )
    extra = {
        "label": label or name,
        "slo_informational": informational,
        "url": url,
        "locust_exit_code": result.exit_code,
        "locust_requests": result.requests,
        "rate_target_per_s": rate,
        "locust_workers": workers,
        "poll_recovery": {k: v for k, v in recovery.items() if k != "diagnostics"},
        "watch_events": len(watcher.events),
        "watch_error": repr(watcher.error) if watcher.error else None,
        **ctx.notes,
    }
    if not spec.touches_pods:
        slo = slo_for(name, {"require_fault_verified": False, "require_recovery": False,
                             **dict(slo_overrides or {})})  # fmt: skip
    report = build_report(
        scenario=name,
        cluster=handle.name,
        replicas=replicas,
        users=users,
        fault=fault,
        requests=requests,
        pods=pods,
        slo=slo,
        started=result.started_at,
        ended=ended,
        extra=extra,
    )
    write_report(report, result.records, directory)
    (directory / "events.jsonl").write_text(
        "".join(_event_line(event) for event in watcher.events), encoding="utf-8"
    )
    progress(f"{name}: report in {directory}")
    return ExperimentResult(report, directory, watcher.events)


def _victims(spec: ExperimentSpec, pods_before: list[PodInfo], fault: FaultInfo) -> list[PodInfo]:
    targets = set(fault.target.split(","))
    chosen = [pod for pod in pods_before if pod.name in targets]
    return chosen or list(pods_before)


def _event_line(event: ClusterEvent) -> str:
    payload = {
        "kind": event.kind,
        "type": event.type,
        "at": event.at,
        "pod": event.pod.to_dict() if event.pod else None,
        "endpoints": list(event.endpoints),
    }
    return json.dumps(payload) + "\n"


def run_tutorial_comparison(
    handle: clusters.ClusterHandle,
    *,
    users: int,
    duration_s: float,
    out_dir: Path,
    progress: Progress,
    replicas: int,
    rate_per_s: float | None = None,
) -> tuple[ExperimentResult, ExperimentResult, Path]:
    """The tutorial's story told with numbers: pod-delete on the tutorial's configuration (one
    replica, no probes, no preStop: ``k8s/overlays/tutorial``) and on ours, side by side.

    Only on the local cluster: the tutorial overlay is built on the local one. The cluster is
    put back to our overlay and ``replicas`` afterwards, even when the tutorial run fails.
    """
    provider = handle.provider
    if handle.name != "local":
        raise ClusterError("the tutorial comparison re-applies overlays on the local cluster only")
    overlays = get_settings().k8s_dir / "overlays"
    settings = get_settings()
    progress("tutorial: applying k8s/overlays/tutorial (1 replica, no probes, no preStop)")
    provider.apply(overlays / "tutorial")
    try:
        provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
        wait_for(
            lambda: len([p for p in provider.list_pods("rag-api") if not p.deleting]) == 1,
            timeout_s=settings.rollout_timeout_s,
            what="the tutorial's single rag-api replica alone",
            describe=lambda: provider.diagnostics("rag-api"),
        )
        # the tutorial has no SLO to meet: its figures are the point
        no_limits = {"max_failed_requests": None, "max_total_s": None,
                     "require_recovery": False}  # fmt: skip
        tutorial = run_experiment(
            handle, "pod-delete", users=users, duration_s=duration_s, out_dir=out_dir,
            progress=progress, slo_overrides=no_limits, rate_per_s=rate_per_s,
            label="pod-delete-tutorial", informational=True,
        )  # fmt: skip
    finally:
        progress("tutorial: restoring k8s/overlays/local")
        provider.apply(overlays / "local")
        provider.scale("rag-api", replicas)
        provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
    ours = run_experiment(
        handle, "pod-delete", users=users, duration_s=duration_s, out_dir=out_dir,
        progress=progress, rate_per_s=rate_per_s, label="pod-delete-ours",
    )  # fmt: skip
    path = out_dir / "comparison-pod-delete.md"
    path.write_text(
        comparison_markdown(tutorial.report, ours.report, "tutorial", "ours"), encoding="utf-8"
    )
    return tutorial, ours, path
