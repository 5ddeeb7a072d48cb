"""Chaos controls for Locust's web UI: pods, fault buttons and measured recovery, beside the charts.

Loaded by ``locustfile.py`` only when Locust runs its web UI (never headless, never on a
worker). It acts on the cluster ``harness up`` made (``harness.cluster.load_current()``; the
state directory comes from ``--harness-state-dir`` / ``HARNESS_STATE_DIR``) through the
provider interface, so it works on every provider.

Two views, because Locust 2.47's React UI renders extra tabs only as read-only tables:

- ``/chaos``: a plain HTML page (linked from the UI's "Download Data" tab) with the pods
  (name, ready, restarts, age), one button per fault and the live recovery table. A little
  JavaScript polls ``/chaos/api/state`` and POSTs ``/chaos/api/actions``.
- a "Chaos" tab in the React UI (``extended_tabs``/``extended_tables``) with the same recovery
  rows, shown while a test runs.

Each fault runs in a background greenlet: inject through the provider, time the recovery with
``harness.faults.wait_recovered`` (rescheduling_s, readiness_s, total_s), then compute the
outage and the failures seen by THIS Locust process in [fault, recovered] from the requests
it recorded (``harness.measure.request_metrics``). In distributed mode the workers make the
requests, so the master has none to judge: those columns stay empty there.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from flask import Response, jsonify, request

from harness import cluster as clusters
from harness import faults
from harness.measure import RequestRecord, request_metrics
from harness.providers.base import ClusterError, ClusterProvider, PodInfo
from harness.settings import get_settings

LOG = logging.getLogger("loadtest.chaos")

# Requests kept in memory for the outage figures: at 1000 requests/s, about 8 minutes.
MAX_REQUESTS_KEPT = 500_000
MAX_ROWS = 200
# After recovery, in-flight requests get this long to complete before the outage is computed:
# a gap that ends just after recovery is only closed by the next success.
SETTLE_S = 2.0
# No recovery wait longer than this, whatever HARNESS_ROLLOUT_TIMEOUT_S says.
MAX_RECOVERY_WAIT_S = 600.0
STATE_PATH = "/chaos/api/state"
ACTIONS_PATH = "/chaos/api/actions"


@dataclass(frozen=True)
class InjectedFault:
    """What an action did: the app whose recovery is timed, its pods before, the victims."""

    app: str
    before: faults.Snapshot
    victims: list[PodInfo]
    at: float  # epoch seconds

    @property
    def target(self) -> str:
        return ",".join(pod.name for pod in self.victims)


def _live(provider: ClusterProvider, app: str) -> list[PodInfo]:
    pods = [pod for pod in provider.list_pods(app) if not pod.deleting]
    if not pods:
        raise ClusterError(f"no running {app} pods; is the cluster healthy (harness status)?")
    return sorted(pods, key=lambda pod: pod.name)


def _kill(provider: ClusterProvider, app: str, mode: str, victims: list[PodInfo]) -> InjectedFault:
    before = faults.snapshot(provider, app)
    at = faults.inject(provider, mode, victims)
    return InjectedFault(app, before, victims, at)


def _delete_one(provider: ClusterProvider) -> InjectedFault:
    return _kill(provider, "rag-api", "delete", _live(provider, "rag-api")[:1])


def _crash_one(provider: ClusterProvider) -> InjectedFault:
    return _kill(provider, "rag-api", "crash", _live(provider, "rag-api")[:1])


def _delete_all(provider: ClusterProvider) -> InjectedFault:
    return _kill(provider, "rag-api", "delete", _live(provider, "rag-api"))


def _kill_chroma(provider: ClusterProvider) -> InjectedFault:
    victims = _live(provider, "chroma")
    before = faults.snapshot(provider, "chroma")
    at = time.time()
    for pod in victims:
        provider.delete_pod(pod.name, grace_period_s=0)
    return InjectedFault("chroma", before, victims, at)


def _rolling_restart(provider: ClusterProvider) -> InjectedFault:
    victims = _live(provider, "rag-api")
    before = faults.snapshot(provider, "rag-api")
    at = time.time()
    provider.rollout_restart("rag-api")
    return InjectedFault("rag-api", before, victims, at)


@dataclass(frozen=True)
class ChaosAction:
    key: str
    label: str
    inject: Callable[[ClusterProvider], InjectedFault]


# The allow-list: a POST naming anything else is refused.
ACTIONS: dict[str, ChaosAction] = {
    action.key: action
    for action in (
        ChaosAction("delete-pod", "Delete one pod", _delete_one),
        ChaosAction("crash-pod", "Crash one pod", _crash_one),
        ChaosAction("delete-all", "Delete all pods", _delete_all),
        ChaosAction("kill-chroma", "Kill chroma", _kill_chroma),
        ChaosAction("rolling-restart", "Rolling restart", _rolling_restart),
    )
}
ROW_COLUMNS = (
    ("action", "Action"),
    ("target", "Target"),
    ("time", "Time"),
    ("status", "Status"),
    ("rescheduling_s", "Rescheduling (s)"),
    ("readiness_s", "Readiness (s)"),
    ("total_s", "Total (s)"),
    ("outage_s", "Outage (s)"),
    ("failures", "Failed / requests in window"),
    ("error", "Error"),
)


class RequestLog:
    """The requests this Locust process made, from its own request events."""

    def __init__(self, limit: int = MAX_REQUESTS_KEPT) -> None:
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=limit)

    def on_request(
        self,
        name: str,
        response_time: float,
        response: Any = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        latency_ms = float(response_time or 0.0)
        start = start_time if start_time is not None else time.time() - latency_ms / 1000.0
        self._records.append(
            RequestRecord(
                start=float(start),
                latency_ms=latency_ms,
                name=name,
                status=int(getattr(response, "status_code", 0) or 0),
                ok=exception is None,
            )
        )

    def __len__(self) -> int:
        return len(self._records)

    def since(self, at: float) -> list[RequestRecord]:
        return [record for record in self._records if record.end >= at]


class ChaosDashboard:
    """The state behind the page: the cluster handle, the recovery rows, one action at a time."""

    def __init__(self, requests: RequestLog) -> None:
        self.requests = requests
        self.rows: list[dict[str, Any]] = []
        self.busy = False
        self._row_ids = itertools.count(1)
        self._handle: clusters.ClusterHandle | None = None
        self._record_mtime: float | None = None

    # ---------------------------------------------------------------- cluster
    def provider(self) -> tuple[str, ClusterProvider]:
        """The cluster `harness up` recorded; reopened when the record changes."""
        record = get_settings().state_dir / "cli" / "current.json"
        try:
            mtime = record.stat().st_mtime
        except FileNotFoundError:
            self._handle = None
            raise ClusterError(
                f"no cluster is up (no {record}); run `harness up`, or point "
                "--harness-state-dir / HARNESS_STATE_DIR at the state directory it used"
            ) from None
        if self._handle is None or mtime != self._record_mtime:
            self._handle = clusters.load_current()
            self._record_mtime = mtime
        return self._handle.name, self._handle.provider

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "actions": [{"key": a.key, "label": a.label} for a in ACTIONS.values()],
            "rows": self.rows,
            "busy": self.busy,
            "requests_seen": len(self.requests),
            "cluster": None,
            "pods": [],
            "error": None,
        }
        try:
            name, provider = self.provider()
            now = time.time()
            pods = provider.list_pods("rag-api") + provider.list_pods("chroma")
            data["cluster"] = name
            data["pods"] = [
                {
                    "name": pod.name,
                    "app": pod.app,
                    "phase": "Terminating" if pod.deleting else pod.phase,
                    "ready": pod.ready,
                    "restarts": pod.restarts,
                    "age_s": round(max(0.0, now - pod.created), 1),
                }
                for pod in pods
            ]
        except Exception as exc:  # the page shows why it cannot list pods
            data["error"] = str(exc) if isinstance(exc, ClusterError) else repr(exc)
        return data

    # ---------------------------------------------------------------- actions
    def start(self, key: str) -> dict[str, Any]:
        """Validate, add a row, run the action in a greenlet. Raises ValueError or busy."""
        action = ACTIONS[key]
        if self.busy:
            raise RuntimeError("another fault is still recovering; wait for its row to finish")
        _, provider = self.provider()  # no cluster: refused before anything happens
        row: dict[str, Any] = {
            "id": next(self._row_ids),
            "action": action.label,
            "target": "",
            "time": time.strftime("%H:%M:%S"),
            "status": "injecting",
            **{key: None for key in ("rescheduling_s", "readiness_s", "total_s", "outage_s")},
            "failures": "",
            "error": "",
        }
        self.rows.append(row)
        del self.rows[:-MAX_ROWS]
        self.busy = True
        gevent.spawn(self._run, action, provider, row)
        return row

    def _run(self, action: ChaosAction, provider: ClusterProvider, row: dict[str, Any]) -> None:
        try:
            fault = action.inject(provider)
            row.update(target=fault.target, status="recovering")
            timeout_s = min(get_settings().rollout_timeout_s, MAX_RECOVERY_WAIT_S)
            recovery = faults.wait_recovered(
                provider, fault.app, fault.before, fault.victims, fault.at, timeout_s
            )
            for key in ("rescheduling_s", "readiness_s", "total_s"):
                row[key] = recovery.get(key)
            recovered_at = fault.at + recovery["total_s"] if recovery["recovered"] else None
            if not recovery["recovered"]:
                row["error"] = f"not recovered within {timeout_s:.0f} s"
            gevent.sleep(SETTLE_S)
            self._request_figures(row, fault.at, recovered_at)
            row["status"] = "recovered" if recovery["recovered"] else "NOT recovered"
        except Exception as exc:  # shown in the page's row, never lost in a greenlet
            LOG.exception("chaos action %s failed", action.key)
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.busy = False

    def _request_figures(
        self, row: dict[str, Any], fault_at: float, recovered_at: float | None
    ) -> None:
        records = self.requests.since(fault_at - 60.0)
        if not records:
            row["failures"] = "no requests (start the load to measure them)"
            return
        metrics = request_metrics(records, fault_at, recovered_at)
        row["outage_s"] = metrics.outage_s
        row["failures"] = f"{metrics.failures_during} / {metrics.requests_during}"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chaos - Locust</title>
<style>
 body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
 h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.5rem}
 table{border-collapse:collapse;background:#fff;min-width:40rem}
 th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;font-size:.9rem}
 th{background:#eee} td.num{text-align:right;font-variant-numeric:tabular-nums}
 button{margin:.2rem;padding:.45rem .9rem;font-size:.9rem;cursor:pointer}
 button:disabled{cursor:wait} #error{color:#b00020;white-space:pre-wrap;margin:.5rem 0}
 .ready{color:#1b5e20} .notready{color:#b00020} .muted{color:#666;font-size:.85rem}
</style></head><body>
<h1>Chaos <span class="muted">cluster: <span id="cluster">?</span> &middot;
requests seen by this Locust: <span id="requests">0</span> &middot; <a href="./">Locust charts</a>
</span></h1>
<div id="error" role="alert"></div>
<h2>Faults</h2><div id="actions"></div>
<h2>Pods</h2>
<table id="pods"><thead><tr><th>name</th><th>app</th><th>phase</th><th>ready</th>
<th>restarts</th><th>age</th></tr></thead><tbody></tbody></table>
<h2>Recovery</h2>
<table id="recovery"><thead><tr>__HEADERS__</tr></thead><tbody></tbody></table>
<p class="muted">rescheduling: fault to replacement pod; readiness: replacement to Ready;
total: fault to every desired replica Ready; outage: longest span without a successful
request; failed / requests: those this Locust started between fault and recovery.</p>
<script>
const COLUMNS = __COLUMNS__;
const NUMERIC = new Set(["rescheduling_s","readiness_s","total_s","outage_s"]);
function cell(tr, text, cls){const td=document.createElement("td");
  td.textContent = text===null||text===undefined ? "" : String(text);
  if(cls) td.className=cls; tr.appendChild(td);}
function showError(text){document.getElementById("error").textContent = text || "";}
function render(state){
  document.getElementById("cluster").textContent = state.cluster || "none";
  document.getElementById("requests").textContent = state.requests_seen;
  const actions = document.getElementById("actions");
  if(!actions.childElementCount){
    for(const a of state.actions){const b=document.createElement("button");
      b.textContent=a.label; b.dataset.action=a.key; b.id="action-"+a.key;
      b.onclick=()=>inject(a.key); actions.appendChild(b);}
  }
  for(const b of actions.querySelectorAll("button")) b.disabled = state.busy;
  const pods = document.querySelector("#pods tbody"); pods.replaceChildren();
  for(const p of state.pods){const tr=document.createElement("tr");
    cell(tr,p.name); cell(tr,p.app); cell(tr,p.phase);
    cell(tr,p.ready?"yes":"no",p.ready?"ready":"notready"); cell(tr,p.restarts,"num");
    cell(tr,p.age_s.toFixed(0)+" s","num"); pods.appendChild(tr);}
  const rows = document.querySelector("#recovery tbody"); rows.replaceChildren();
  for(const r of state.rows.slice().reverse()){const tr=document.createElement("tr");
    tr.dataset.status=r.status;
    for(const [key] of COLUMNS) cell(tr, r[key], NUMERIC.has(key)?"num "+key:key);
    rows.appendChild(tr);}
  if(state.error) showError(state.error);
}
async function refresh(){
  try{const res = await fetch("__STATE__",{cache:"no-store"});
    const state = await res.json(); if(!state.error) showError(""); render(state);}
  catch(e){showError("dashboard unreachable: "+e);}
}
async function inject(key){
  try{const res = await fetch("__ACTIONS__",{method:"POST",
      headers:{"Content-Type":"application/json"},body:JSON.stringify({action:key})});
    const body = await res.json(); showError(res.ok ? "" : body.error);}
  catch(e){showError("request failed: "+e);}
  refresh();
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


def render_page() -> str:
    headers = "".join(f"<th>{title}</th>" for _, title in ROW_COLUMNS)
    return (
        PAGE.replace("__HEADERS__", headers)
        .replace("__COLUMNS__", json.dumps([list(column) for column in ROW_COLUMNS]))
        .replace("__STATE__", STATE_PATH.lstrip("/"))
        .replace("__ACTIONS__", ACTIONS_PATH.lstrip("/"))
    )


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def install(environment: Any, state_dir: str = "") -> ChaosDashboard:
    """Register the request recorder, the routes and the React tab on a running web UI."""
    web_ui = environment.web_ui
    if web_ui is None:
        raise RuntimeError("the chaos dashboard needs Locust's web UI (not --headless)")
    if state_dir:
        # the harness reads its state directory from here (harness.settings)
        os.environ["HARNESS_STATE_DIR"] = str(Path(state_dir).resolve())
        get_settings.cache_clear()
    requests = RequestLog()
    environment.events.request.add_listener(requests.on_request)
    dashboard = ChaosDashboard(requests)
    app = web_ui.app
    guard = web_ui.auth_required_if_enabled

    @app.route("/chaos")
    @guard
    def chaos_page() -> Response:
        return Response(render_page(), mimetype="text/html")

    @app.route(STATE_PATH)
    @guard
    def chaos_state() -> Response:
        return jsonify(dashboard.state())

    @app.route(ACTIONS_PATH, methods=["POST"])
    @guard
    def chaos_action() -> tuple[Response, int]:
        # JSON only: a cross-site form cannot send it without a CORS preflight we never grant
        if not request.is_json:
            return _error(415, 'send JSON: {"action": NAME} with Content-Type application/json')
        body = request.get_json(silent=True)
        key = body.get("action") if isinstance(body, dict) else None
        if not isinstance(key, str) or key not in ACTIONS:
            return _error(400, f"unknown action {key!r}; choose one of {', '.join(ACTIONS)}")
        try:
            row = dashboard.start(key)
        except ClusterError as exc:  # no cluster, or it did not answer
            return _error(503, str(exc))
        except RuntimeError as exc:  # busy
            return _error(409, str(exc))
        except Exception as exc:  # shown in the page rather than a bare 500
            LOG.exception("chaos action %s refused", key)
            return _error(503, f"{type(exc).__name__}: {exc}")
        return jsonify({"accepted": True, "row": row}), 202

    web_ui.template_args["extended_tabs"] = [{"title": "Chaos", "key": "chaos"}]
    web_ui.template_args["extended_tables"] = [
        {"key": "chaos", "structure": [{"key": k, "title": t} for k, t in ROW_COLUMNS]}
    ]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./chaos", "title": "Chaos dashboard: pods, fault buttons, recovery (/chaos)"}
    ]

    @app.after_request
    def add_chaos_rows(response: Response) -> Response:
        # the React UI shows `extended_stats` rows in the Chaos tab while a test runs
        if request.path != "/stats/requests" or response.mimetype != "application/json":
            return response
        with contextlib.suppress(ValueError, TypeError):
            payload = json.loads(response.get_data())
            rows = [{k: ("" if r.get(k) is None else r[k]) for k, _ in ROW_COLUMNS}
                    for r in dashboard.rows]  # fmt: skip
            payload["extended_stats"] = [{"key": "chaos", "data": rows}]
            response.set_data(json.dumps(payload))
        return response

    LOG.info("chaos dashboard on /chaos (state dir %s)", get_settings().state_dir)
    return dashboard
