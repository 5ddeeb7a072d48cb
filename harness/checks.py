"""End-to-end checks through the Service, shared by ``tests/e2e`` and ``harness run``.

Each check returns a :class:`CheckResult`; ``ok`` False carries a message that names
the question, the expected and the actual answer (or pod, or document).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.golden import GoldenSet, Verdict, judge, load_golden
from harness.providers.base import ClusterProvider
from harness.settings import get_settings
from harness.waiting import wait_for

SERVED_BY_HEADER = "X-Served-By"


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0


def _timed(name: str, body: Callable[[], CheckResult]) -> CheckResult:
    started = time.monotonic()
    try:
        result = body()
    except Exception as exc:  # a check that crashes is a failed check, with its cause
        result = CheckResult(name, False, f"{type(exc).__name__}: {exc}")
    result.name = name
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def ask(client: httpx.Client, question: str, top_k: int = 3) -> dict[str, Any]:
    response = client.post("/query", json={"question": question, "top_k": top_k})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def golden_answers(client: httpx.Client, golden: GoldenSet | None = None) -> CheckResult:
    """Every golden question through the Service; hit rate against the file's threshold."""

    def run() -> CheckResult:
        gold = golden or load_golden()
        verdicts: list[Verdict] = [
            judge(question, ask(client, question.question, gold.top_k))
            for question in gold.questions
        ]
        hits = sum(verdict.hit for verdict in verdicts)
        hit_rate = hits / len(verdicts) if verdicts else 0.0
        misses = [verdict.explain() for verdict in verdicts if not verdict.hit]
        figures = {
            "questions": len(verdicts),
            "hits": hits,
            "hit_rate": round(hit_rate, 3),
            "min_hit_rate": gold.min_hit_rate,
            "doc_hit_rate": round(sum(v.doc_found for v in verdicts) / max(len(verdicts), 1), 3),
            "degraded": sum(bool(v.degraded) for v in verdicts),
            "misses": misses,
        }
        ok = hit_rate >= gold.min_hit_rate
        message = (
            f"hit rate {hits}/{len(verdicts)} = {hit_rate:.2f} (threshold {gold.min_hit_rate:.2f})"
        )
        if misses:
            message += "\n  " + "\n  ".join(misses)
        return CheckResult("golden-answers", ok, message, figures)

    return _timed("golden-answers", run)


def docs_reachable(client: httpx.Client) -> CheckResult:
    def run() -> CheckResult:
        docs = client.get("/docs")
        spec = client.get("/openapi.json")
        problems = []
        if docs.status_code != 200 or "swagger" not in docs.text.lower():
            problems.append(f"/docs answered {docs.status_code}: {docs.text[:120]!r}")
        if spec.status_code != 200 or "/query" not in spec.json().get("paths", {}):
            problems.append(f"/openapi.json answered {spec.status_code} without /query")
        return CheckResult("docs-reachable", not problems, "; ".join(problems))

    return _timed("docs-reachable", run)


def _ready_pod_urls(provider: ClusterProvider) -> dict[str, str]:
    return {
        pod.name: provider.pod_url(pod.name)
        for pod in provider.list_pods("rag-api")
        if pod.ready and not pod.deleting
    }


def _probe_document(url: str, doc_id: str, timeout_s: float) -> int:
    with httpx.Client(base_url=url, timeout=timeout_s) as pod_client:
        return pod_client.get(f"/documents/{doc_id}").status_code


def new_document(marker: str | None = None) -> dict[str, str]:
    """A document with a fact no knowledge-base file holds, so retrieval proves the write."""
    token = marker or secrets.token_hex(4)
    return {
        "id": f"e2e-{token}",
        "title": f"Harness probe {token}",
        "text": (
            f"The harness probe document {token} records that the quartz lighthouse of "
            f"Velmora keeps exactly {int(token, 16) % 900 + 100} lanterns lit every night."
        ),
    }


def ingest_everywhere(client: httpx.Client, provider: ClusterProvider, api_key: str) -> CheckResult:
    """Ingest through the Service; every replica answers it; listed; deleted everywhere."""

    def run() -> CheckResult:
        timeout = get_settings().request_timeout_s
        doc = new_document()
        headers = {"X-API-Key": api_key} if api_key else {}
        created = client.post("/documents", json=doc, headers=headers)
        if created.status_code not in (200, 201):
            return CheckResult(
                "ingest-everywhere",
                False,
                f"POST /documents answered {created.status_code}: {created.text[:200]}",
            )
        problems = []
        pods = _ready_pod_urls(provider)
        for pod, url in pods.items():
            with httpx.Client(base_url=url, timeout=timeout) as pod_client:
                found = pod_client.get(f"/documents/{doc['id']}")
                if found.status_code != 200:
                    problems.append(f"pod {pod}: GET /documents/{doc['id']} -> {found.status_code}")
                    continue
                body = pod_client.post(
                    "/query",
                    json={
                        "question": "How many lanterns does the quartz lighthouse "
                        "of Velmora keep lit?",
                        "top_k": 3,
                    },
                ).json()
                ids = [s.get("id") for s in body.get("sources", [])]
                if doc["id"] not in ids:
                    problems.append(f"pod {pod}: query did not retrieve {doc['id']}, got {ids}")
        listed_ids = _all_document_ids(client)
        if doc["id"] not in listed_ids:
            problems.append(f"GET /documents does not list {doc['id']}")
        deleted = client.delete(f"/documents/{doc['id']}", headers=headers)
        if deleted.status_code not in (200, 204):
            problems.append(f"DELETE answered {deleted.status_code}: {deleted.text[:200]}")
        for pod, url in pods.items():
            status = _probe_document(url, doc["id"], timeout)
            if status != 404:
                problems.append(f"pod {pod}: deleted document still answers {status}")
        return CheckResult(
            "ingest-everywhere",
            not problems,
            "; ".join(problems),
            {"pods_checked": sorted(pods)},
        )

    return _timed("ingest-everywhere", run)


def _all_document_ids(client: httpx.Client, page: int = 100, max_pages: int = 50) -> set[str]:
    """Every id GET /documents lists, page by page (bounded)."""
    ids: set[str] = set()
    for number in range(max_pages):
        response = client.get("/documents", params={"limit": page, "offset": number * page})
        response.raise_for_status()
        items = response.json().get("items", [])
        ids |= {str(item.get("id")) for item in items if isinstance(item, dict)}
        if len(items) < page:
            break
    return ids


def survives_pod_loss(client: httpx.Client, provider: ClusterProvider, api_key: str) -> CheckResult:
    """A document survives the deletion of every rag-api pod and of the chroma pod."""

    def run() -> CheckResult:
        settings = get_settings()
        doc = new_document()
        headers = {"X-API-Key": api_key} if api_key else {}
        created = client.post("/documents", json=doc, headers=headers)
        if created.status_code not in (200, 201):
            return CheckResult("survives-pod-loss", False, f"ingest answered {created.status_code}")
        before = {pod.uid for pod in provider.list_pods("rag-api")}
        before |= {pod.uid for pod in provider.list_pods("chroma")}
        for pod in provider.list_pods("chroma") + provider.list_pods("rag-api"):
            provider.delete_pod(pod.name)
        provider.wait_rollout("chroma", timeout_s=settings.rollout_timeout_s)
        provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
        after = {pod.uid for pod in provider.list_pods("rag-api") if not pod.deleting}
        after |= {pod.uid for pod in provider.list_pods("chroma") if not pod.deleting}
        if after & before:
            return CheckResult(
                "survives-pod-loss", False, f"pods were not replaced: {sorted(after & before)}"
            )

        def document_back() -> bool:
            return client.get(f"/documents/{doc['id']}").status_code == 200

        wait_for(
            document_back,
            timeout_s=settings.rollout_timeout_s,
            what=f"document {doc['id']} readable after every pod was replaced",
        )
        client.delete(f"/documents/{doc['id']}", headers=headers)
        return CheckResult("survives-pod-loss", True)

    return _timed("survives-pod-loss", run)


class LightTraffic:
    """A background thread asking one question in a bounded loop; counts every outcome."""

    def __init__(self, url: str, question: str, max_s: float, interval_s: float = 0.1) -> None:
        self.url, self.question = url, question
        self.max_s, self.interval_s = max_s, interval_s
        self.ok = 0
        self.failures: list[str] = []
        self.served_by: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="light-traffic", daemon=True)

    def __enter__(self) -> LightTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_s + 15)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        timeout = get_settings().request_timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                # a fresh connection each time, so kube-proxy style balancing sees every call
                with httpx.Client(base_url=self.url, timeout=timeout) as client:
                    response = client.post("/query", json={"question": self.question})
                if response.status_code == 200:
                    self.ok += 1
                    self.served_by.add(response.headers.get(SERVED_BY_HEADER, "?"))
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:100]}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            self._stop.wait(self.interval_s)


def rolling_restart_clean(provider: ClusterProvider, url: str) -> CheckResult:
    """A rolling restart under light traffic completes with zero failed requests."""

    def run() -> CheckResult:
        settings = get_settings()
        before = {pod.uid for pod in provider.list_pods("rag-api")}
        with LightTraffic(url, "What does a readiness probe do?", settings.rollout_timeout_s) as t:
            time.sleep(1.0)
            provider.rollout_restart("rag-api")
            wait_for(
                lambda: _all_replaced(provider, before),
                timeout_s=settings.rollout_timeout_s,
                what="every rag-api pod replaced by the rolling restart",
                describe=lambda: provider.diagnostics("rag-api"),
            )
            provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
            time.sleep(1.0)
        figures = {"requests_ok": t.ok, "failures": len(t.failures)}
        ok = not t.failures and t.ok > 0
        return CheckResult("rolling-restart", ok, "; ".join(t.failures[:5]) or "", figures)

    return _timed("rolling-restart", run)


def _all_replaced(provider: ClusterProvider, old_uids: set[str]) -> bool:
    pods = [pod for pod in provider.list_pods("rag-api") if not pod.deleting]
    desired = provider.desired_replicas("rag-api")
    return (
        len(pods) == desired
        and all(pod.ready for pod in pods)
        and not ({pod.uid for pod in pods} & old_uids)
    )


def scale_up_and_down(provider: ClusterProvider, url: str, replicas: int) -> CheckResult:
    """Scale to replicas+1 and back; the Service keeps answering and uses the new pod."""

    def run() -> CheckResult:
        settings = get_settings()
        before = {pod.name for pod in provider.list_pods("rag-api")}
        with LightTraffic(url, "What is a NodePort Service?", settings.rollout_timeout_s) as t:
            provider.scale("rag-api", replicas + 1)
            provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
            new_pods = {pod.name for pod in provider.list_pods("rag-api")} - before

            def new_pod_served() -> bool:
                return bool(new_pods & t.served_by)

            wait_for(
                new_pod_served,
                timeout_s=30,
                what=f"a response served by a new pod {sorted(new_pods)}",
                describe=lambda: f"served by so far: {sorted(t.served_by)}",
            )
            provider.scale("rag-api", replicas)
            provider.wait_rollout("rag-api", timeout_s=settings.rollout_timeout_s)
            time.sleep(1.0)
        figures = {"requests_ok": t.ok, "failures": len(t.failures), "new_pods": sorted(new_pods)}
        return CheckResult("scale", not t.failures, "; ".join(t.failures[:5]), figures)

    return _timed("scale", run)
