"""Recovery measurements: pure functions over the request timeline and the pod events.

Nothing here talks to a cluster or a clock; every input is passed in, every time is epoch
seconds, so each figure can be checked against a constructed timeline.

Definitions (for one fault injected at `fault_at`):

Requests (the timeline Locust writes, one record per request):
- a request is *successful* when Locust judged it so (`ok`: HTTP status, schema and, for
  questions, a correct answer); it *completes* at `start + latency_ms / 1000`.
- the measurement window is `[fault_at, recovered_at]`; when `recovered_at` is None (the
  cluster did not recover) the window runs to the last request's completion.
- `outage_s`: the longest span without a successful completion that touches the window.
  The spans are the gaps between consecutive successful completions; a gap counts when it
  ends after `fault_at` and begins before the window's end. When no request succeeded before
  the fault, the first span runs from `fault_at` to the first successful completion. None when
  no request succeeded after the fault (the outage never ended in the timeline).
  Its resolution is the request rate: at 50 requests/s a healthy service shows gaps of tens of
  milliseconds, so `outage_s` is that small when nothing went wrong.
- `error_rate_during`: failed / all requests that *started* in the window (None if none did).
- latency p50/p95/p99 of successful requests that started before the fault, in the window,
  and after it (after `recovered_at`); failed requests are left out because a refused
  connection "answers" in a millisecond and would flatter the figures.
- `correct_rate`: correct / judged, where judged means a question whose answer arrived with a
  valid schema and was checked (`correct` is not None).
- `inflight_at_fault`: requests started before the fault and completed after it. The fault
  lands somewhere between `fault_at` (just before the harness asked for it) and
  `fault_acknowledged_at` (when the provider said it was done); a request that started in that
  interval and ended after `fault_at` was in flight when the fault landed, so it counts too.

Pods (events from the provider's watch plus the pods listed just before the fault):
- a *replacement* is a pod whose uid was not among the pods before the fault; for a crash the
  pod keeps its uid and the replacement is the restarted container (restart count rose).
- `rescheduling_s`: fault -> the first replacement is seen (or the first restart is seen).
- `readiness_s`: that replacement seen -> that replacement Ready.
- `total_s`: fault -> the fault has been observed (a pod disrupted or replaced) and the
  Deployment has its desired replicas Ready again: exactly `desired` pods that are not
  terminating, all Ready (terminating pods are not counted; with `all_replaced`, none of the
  pods from before the fault may remain, as after a rolling restart).
- `fault_verified`: some pod uid changed or some restart count rose.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.providers.base import ClusterEvent, PodInfo

PERCENTILES = (50, 95, 99)
TERMINATING_PHASES = frozenset({"Terminating", "Succeeded", "Failed"})


@dataclass(frozen=True)
class RequestRecord:
    """One request as the locustfile records it (a line of the timeline file)."""

    start: float  # epoch seconds when the request started
    latency_ms: float
    name: str
    status: int  # HTTP status, 0 when no response (refused, reset, timed out)
    ok: bool
    correct: bool | None = None  # None: not a judged question, or no valid answer to judge
    error: str | None = None
    question: str | None = None  # the golden question's id, for POST /query

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(
            start=float(data["start"]),
            latency_ms=float(data["latency_ms"]),
            name=str(data["name"]),
            status=int(data["status"]),
            ok=bool(data["ok"]),
            correct=None if data.get("correct") is None else bool(data["correct"]),
            error=data.get("error"),
            question=data.get("question"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_timeline(path: Path) -> list[RequestRecord]:
    """Records from a timeline file, in start order. A torn last line (a process killed while
    writing) is skipped; any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[RequestRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(RequestRecord.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}:{number}: not a timeline record ({exc}): {line[:200]}"
            ) from exc
    records.sort(key=lambda record: record.start)
    return records


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(records: Iterable[RequestRecord]) -> dict[str, float | None]:
    """p50/p95/p99 latency (ms) of the successful requests among `records`."""
    latencies = [record.latency_ms for record in records if record.ok]
    return {f"p{pct}": _round(percentile(latencies, pct)) for pct in PERCENTILES}


@dataclass
class RequestMetrics:
    requests: int
    failures: int
    connection_errors: int  # status 0
    server_errors: int  # 5xx
    outage_s: float | None
    outage_from: float | None  # epoch bounds of the longest span without success
    outage_to: float | None
    requests_during: int
    failures_during: int
    error_rate_during: float | None
    inflight_at_fault: int
    correct_rate: float | None
    judged: int
    latency: dict[str, dict[str, float | None]]  # before/during/after -> p50/p95/p99 (ms)
    window: tuple[float, float | None]  # (fault_at, recovered_at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_metrics(
    records: Sequence[RequestRecord],
    fault_at: float,
    recovered_at: float | None,
    fault_acknowledged_at: float | None = None,
) -> RequestMetrics:
    """Request-level figures for a fault at `fault_at` (see the module docstring)."""
    records = sorted(records, key=lambda record: record.start)
    landed_by = fault_acknowledged_at if fault_acknowledged_at is not None else fault_at
    window_end = recovered_at
    if window_end is None:
        window_end = max((record.end for record in records), default=fault_at)

    outage_s, outage_from, outage_to = _longest_outage(records, fault_at, window_end)

    during = [r for r in records if fault_at <= r.start <= window_end]
    failures_during = sum(1 for r in during if not r.ok)
    judged = [r for r in records if r.correct is not None]
    before = [r for r in records if r.start < fault_at]
    after = [r for r in records if recovered_at is not None and r.start > recovered_at]
    return RequestMetrics(
        requests=len(records),
        failures=sum(1 for r in records if not r.ok),
        connection_errors=sum(1 for r in records if r.status == 0),
        server_errors=sum(1 for r in records if r.status >= 500),
        outage_s=_round(outage_s),
        outage_from=outage_from,
        outage_to=outage_to,
        requests_during=len(during),
        failures_during=failures_during,
        error_rate_during=_round(failures_during / len(during)) if during else None,
        inflight_at_fault=sum(
            1 for r in records if r.start < max(fault_at, landed_by) and r.end > fault_at
        ),
        correct_rate=_round(sum(1 for r in judged if r.correct) / len(judged)) if judged else None,
        judged=len(judged),
        latency={
            "before": latency_summary(before),
            "during": latency_summary(during),
            "after": latency_summary(after),
        },
        window=(fault_at, recovered_at),
    )


def _longest_outage(
    records: Sequence[RequestRecord], fault_at: float, window_end: float
) -> tuple[float | None, float | None, float | None]:
    completions = sorted(r.end for r in records if r.ok)
    if not completions or completions[-1] <= fault_at:
        return None, None, None  # nothing succeeded after the fault: no end to the outage
    if completions[0] > fault_at:
        completions.insert(0, fault_at)  # nothing succeeded before: the outage starts at fault
    best: tuple[float, float, float] | None = None
    for begin, end in itertools.pairwise(completions):
        if end <= fault_at or begin >= window_end:
            continue
        if best is None or end - begin > best[0]:
            best = (end - begin, begin, end)
    if best is None:  # a success completed exactly at the fault and nothing after: no gap
        return 0.0, fault_at, fault_at
    return best


@dataclass
class ReplacementTiming:
    name: str
    uid: str
    how: str  # "new-pod" or "restart"
    seen_at: float
    ready_at: float | None = None


@dataclass
class PodMetrics:
    rescheduling_s: float | None
    readiness_s: float | None
    replacement_ready_s: float | None  # rescheduling_s + readiness_s: fault -> replacement Ready
    total_s: float | None
    recovered_at: float | None  # epoch: fault_at + total_s
    fault_verified: bool
    uids_changed: bool
    restarts_rose: bool
    pods_before: int
    pods_after: int
    ready_after: int
    desired_replicas: int
    replacements: list[ReplacementTiming] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_terminating(pod: PodInfo) -> bool:
    return pod.deleting or pod.phase in TERMINATING_PHASES


def pod_metrics(
    events: Iterable[ClusterEvent],
    fault_at: float,
    desired_replicas: int,
    pods_before: Sequence[PodInfo] | None = None,
    app: str | None = "rag-api",
    all_replaced: bool = False,
) -> PodMetrics:
    """Pod-level recovery figures for a fault at `fault_at` (see the module docstring).

    `pods_before` are the pods listed just before the fault; when None, they are rebuilt from
    the events seen before `fault_at`. Events of other apps (by the pod's `app` label, when it
    has one) are ignored.
    """
    pod_events = sorted(
        (
            e
            for e in events
            if e.kind == "pod"
            and e.pod is not None
            and (app is None or not e.pod.app or e.pod.app == app)
        ),
        key=lambda e: e.at,
    )
    state: dict[str, PodInfo] = {}
    if pods_before is not None:
        state = {pod.uid: pod for pod in pods_before}
    for event in pod_events:
        if event.at >= fault_at:
            break
        if pods_before is None:
            _apply(state, event)
    before = dict(state)
    restarts_before = {uid: pod.restarts for uid, pod in before.items()}

    replacements: dict[str, ReplacementTiming] = {}
    disrupted = False
    uids_changed = False
    restarts_rose = False
    recovered_at: float | None = None
    for event in pod_events:
        if event.at < fault_at:
            continue
        pod = event.pod
        assert pod is not None  # filtered above
        _apply(state, event)
        if pod.uid not in before:
            uids_changed = disrupted = True
            if pod.uid not in replacements and event.type != "DELETED":
                replacements[pod.uid] = ReplacementTiming(pod.name, pod.uid, "new-pod", event.at)
        else:
            if event.type == "DELETED" or _is_terminating(pod) or not pod.ready:
                disrupted = True
                if event.type == "DELETED":
                    uids_changed = True
            if pod.restarts > restarts_before.get(pod.uid, 0):
                restarts_rose = disrupted = True
                if pod.uid not in replacements:
                    replacements[pod.uid] = ReplacementTiming(
                        pod.name, pod.uid, "restart", event.at
                    )
        timing = replacements.get(pod.uid)
        serving = pod.ready and not _is_terminating(pod) and event.type != "DELETED"
        if timing is not None and timing.ready_at is None and serving:
            timing.ready_at = event.at
        if (
            recovered_at is None
            and disrupted
            and _recovered(state, before, desired_replicas, all_replaced)
        ):
            recovered_at = event.at

    first = min(replacements.values(), key=lambda t: t.seen_at, default=None)
    first_ready_at = None if first is None else first.ready_at
    rescheduling_s = None if first is None else first.seen_at - fault_at
    readiness_s = (
        None if first is None or first_ready_at is None else first_ready_at - first.seen_at
    )
    live = [pod for pod in state.values() if not _is_terminating(pod)]
    return PodMetrics(
        rescheduling_s=_round(rescheduling_s),
        readiness_s=_round(readiness_s),
        replacement_ready_s=_round(None if first_ready_at is None else first_ready_at - fault_at),
        total_s=_round(None if recovered_at is None else recovered_at - fault_at),
        recovered_at=recovered_at,
        fault_verified=uids_changed or restarts_rose,
        uids_changed=uids_changed,
        restarts_rose=restarts_rose,
        pods_before=len(before),
        pods_after=len(live),
        ready_after=sum(1 for pod in live if pod.ready),
        desired_replicas=desired_replicas,
        replacements=sorted(replacements.values(), key=lambda t: t.seen_at),
    )


def _apply(state: dict[str, PodInfo], event: ClusterEvent) -> None:
    assert event.pod is not None
    if event.type == "DELETED":
        state.pop(event.pod.uid, None)
    else:
        state[event.pod.uid] = event.pod


def _recovered(
    state: dict[str, PodInfo], before: dict[str, PodInfo], desired: int, all_replaced: bool
) -> bool:
    live = [pod for pod in state.values() if not _is_terminating(pod)]
    if len(live) != desired or not all(pod.ready for pod in live):
        return False
    return not (all_replaced and any(pod.uid in before for pod in live))


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
