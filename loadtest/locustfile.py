"""Load for the RAG API: the golden questions, a few health checks and ingests.

Runs on its own (`locust -f loadtest/locustfile.py --host http://127.0.0.1:31859` for the web
dashboard, add `--headless -u 10 -r 10 -t 60s` for a terminal run) and under the harness, which
starts it as a subprocess (`harness.load`). Every response is validated: status, JSON schema
and, for questions, whether the answer is correct (the expected document is among the sources
and every fact appears in the answer or the source texts). A wrong answer is a failure in
Locust's statistics, so the dashboard shows it.

With `--timeline PATH` every request is appended to PATH as one JSON line:
`{"start", "latency_ms", "name", "status", "ok", "correct", "error", "question"}` (see
harness.measure.RequestRecord).

This file imports nothing from the harness so it can be copied and run anywhere Locust runs;
with the web UI it also loads `chaos_dashboard.py` (beside it, needs the harness) for the
/chaos page, and carries on without it when that cannot be imported.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import random
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

LOG = logging.getLogger("loadtest")

DEFAULT_GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "e2e" / "golden.yaml"
DEFAULT_TOP_K = 3
# Ingested load-test documents per run cycle through this many ids, so a long run leaves at
# most this many documents behind (and the test_stop cleanup removes them).
INGEST_ID_SLOTS = 10
CLEANUP_DEADLINE_S = 5.0
# A source id names the expected document when it is the document id itself or a chunk of it
# ("doc#3", "doc:3", "doc/3", "doc@3").
CHUNK_ID_SEPARATORS = ("#", ":", "/", "@")


@dataclass(frozen=True)
class GoldenQuestion:
    id: str
    question: str
    expected_doc: str = ""
    facts: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        return bool(self.expected_doc or self.facts)


@dataclass
class GoldenSet:
    questions: list[GoldenQuestion]
    top_k: int = DEFAULT_TOP_K
    source: str = ""
    notes: list[str] = field(default_factory=list)


# Used only when the golden file is missing: schema is still validated, correctness is not.
FALLBACK_QUESTIONS = [
    GoldenQuestion("fallback-1", "What is a readiness probe?"),
    GoldenQuestion("fallback-2", "How does a Kubernetes Service pick its endpoints?"),
    GoldenQuestion("fallback-3", "What happens to a pod when it is deleted?"),
]


def load_golden(path: Path) -> GoldenSet:
    if not path.is_file():
        return GoldenSet(
            list(FALLBACK_QUESTIONS),
            source="fallback",
            notes=[
                f"golden file {path} not found: using {len(FALLBACK_QUESTIONS)} fallback "
                "questions, answers are checked for schema only, not correctness"
            ],
        )
    import yaml  # only needed when there is a file to read

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw_questions = data.get("questions") or []
    if not raw_questions:
        raise ValueError(f"golden file {path} has no `questions:` list")
    questions = [
        GoldenQuestion(
            id=str(item.get("id", f"q{index}")),
            question=str(item["question"]),
            expected_doc=str(item.get("expected_doc") or ""),
            facts=tuple(str(fact) for fact in item.get("facts") or ()),
        )
        for index, item in enumerate(raw_questions)
    ]
    return GoldenSet(questions, top_k=int(data.get("top_k", DEFAULT_TOP_K)), source=str(path))


def schema_problem(body: Any) -> str | None:
    """What is wrong with a /query response body, or None when it has the agreed shape."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    for key, kind in (("answer", str), ("sources", list), ("model", str), ("degraded", bool)):
        if key not in body:
            return f"missing key {key!r}"
        if not isinstance(body[key], kind):
            return f"{key!r} is {type(body[key]).__name__}, expected {kind.__name__}"
    for index, source in enumerate(body["sources"]):
        if not isinstance(source, dict):
            return f"sources[{index}] is not an object"
        for key in ("id", "title", "score", "text"):
            if key not in source:
                return f"sources[{index}] misses {key!r}"
        if not isinstance(source["score"], int | float) or isinstance(source["score"], bool):
            return f"sources[{index}].score is not a number"
    return None


def names_document(source_id: str, document_id: str) -> bool:
    if source_id == document_id:
        return True
    return any(source_id.startswith(document_id + sep) for sep in CHUNK_ID_SEPARATORS)


def answer_problem(question: GoldenQuestion, body: dict[str, Any]) -> str | None:
    """Why a schema-valid answer is wrong, or None when it is correct."""
    source_ids = [str(source["id"]) for source in body["sources"]]
    if question.expected_doc and not any(
        names_document(sid, question.expected_doc) for sid in source_ids
    ):
        return f"expected document {question.expected_doc!r} not among sources {source_ids}"
    haystack = " ".join([body["answer"], *(str(s["text"]) for s in body["sources"])]).lower()
    missing = [fact for fact in question.facts if fact.lower() not in haystack]
    if missing:
        return f"facts missing from answer and sources: {missing}"
    return None


class Timeline:
    """Appends one JSON line per request. One O_APPEND descriptor per process and one write()
    per line: a line is never interleaved with another, whether the writer is a greenlet here
    or another Locust process appending to the same file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            return
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoadState:
    """Per-process state set up once at init: the questions, the timeline, the ingest switch."""

    golden: GoldenSet = GoldenSet(list(FALLBACK_QUESTIONS), source="not loaded")
    timeline: Timeline | None = None
    run_id: str = ""
    api_key: str = ""
    ingest_enabled: bool = True
    ingest_counter = itertools.count()
    user_counter = itertools.count()
    ingested_ids: set[str] = set()  # noqa: RUF012 (process-wide on purpose)
    user_rps: float = 1.0


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    # on the parser itself, not a group: only Locust's parser knows `is_secret`
    parser.add_argument(
        "--golden",
        type=str,
        env_var="LOCUST_GOLDEN",
        default=str(DEFAULT_GOLDEN),
        help="YAML file with the golden questions (top-level `questions:` list)",
    )
    parser.add_argument(
        "--api-key",
        type=str,
        env_var="RAG_API_KEY",
        default="",
        is_secret=True,
        help="X-API-Key for POST /documents; without one, ingests stop at the first 401",
    )
    parser.add_argument(
        "--timeline",
        type=str,
        env_var="LOCUST_TIMELINE",
        default="",
        help="append every request as a JSON line to this file (truncated at start)",
    )
    parser.add_argument(
        "--user-rps",
        type=float,
        env_var="LOCUST_USER_RPS",
        default=1.0,
        help="tasks per second each user aims at (jittered pacing); 0 = no wait",
    )
    parser.add_argument(
        "--run-id",
        type=str,
        env_var="LOCUST_RUN_ID",
        default="",
        help="names this run's ingested documents loadtest-<run-id>-<n> (random if empty)",
    )
    parser.add_argument(
        "--harness-state-dir",
        type=str,
        env_var="HARNESS_STATE_DIR",
        default="",
        help="web UI only: the harness state directory whose cluster (`harness up`) the "
        "/chaos page acts on (default: the harness's own, .state)",
    )


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # Locust used as a library without a command line
        return
    LoadState.golden = load_golden(Path(options.golden))
    for note in LoadState.golden.notes:
        LOG.warning(note)
    LOG.info(
        "asking %d golden questions from %s",
        len(LoadState.golden.questions),
        LoadState.golden.source,
    )
    LoadState.api_key = options.api_key
    LoadState.user_rps = max(0.0, float(options.user_rps))
    LoadState.run_id = options.run_id or uuid.uuid4().hex[:8]
    if options.timeline:
        timeline_path = Path(options.timeline)
        if not isinstance(environment.runner, WorkerRunner):
            # The process that owns the run starts the file; workers only append to it.
            timeline_path.parent.mkdir(parents=True, exist_ok=True)
            timeline_path.write_bytes(b"")
        LoadState.timeline = Timeline(timeline_path)
    if getattr(environment, "web_ui", None) is not None:
        install_chaos_dashboard(environment, options.harness_state_dir)


def install_chaos_dashboard(environment: Environment, state_dir: str) -> None:
    """The /chaos page (chaos_dashboard.py beside this file): only with the web UI, so a
    headless run, a worker, or a copy of this file alone never needs the harness."""
    path = Path(__file__).with_name("chaos_dashboard.py")
    try:
        # by file path: Locust takes this file's directory off sys.path after importing it
        spec = importlib.util.spec_from_file_location("chaos_dashboard", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        module.install(environment, state_dir)
    except Exception:  # the charts and the load still work without it
        sys.modules.pop("chaos_dashboard", None)
        LOG.exception("chaos dashboard not available (%s)", path)


@events.request.add_listener
def record_request(
    request_type: str,
    name: str,
    response_time: float,
    response: Any,
    context: dict[str, Any],
    exception: BaseException | None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    if LoadState.timeline is None:
        return
    verdict = context.get("verdict") or {}
    status = int(getattr(response, "status_code", 0) or 0)
    LoadState.timeline.write(
        {
            "start": start_time,
            "latency_ms": round(float(response_time), 3),
            "name": name,
            "status": status,
            "ok": exception is None,
            "correct": verdict.get("correct"),
            "question": context.get("question_id"),
            "error": None if exception is None else f"{type(exception).__name__}: {exception}",
        }
    )


@events.test_stop.add_listener
def remove_ingested(environment: Environment, **_: Any) -> None:
    """Best effort, bounded in time: delete the documents this process ingested. Plain urllib
    (cooperative under gevent) keeps the cleanup out of the statistics and the timeline."""
    if not LoadState.ingested_ids or not environment.host:
        return
    deadline = time.monotonic() + CLEANUP_DEADLINE_S
    for doc_id in sorted(LoadState.ingested_ids):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            LOG.warning("cleanup deadline reached; left %s behind", doc_id)
            break
        request = urllib.request.Request(  # noqa: S310 (http URL from --host)
            f"{environment.host.rstrip('/')}/documents/{doc_id}",
            method="DELETE",
            headers={"X-API-Key": LoadState.api_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=min(2.0, remaining)):  # noqa: S310
                pass
        except (OSError, ValueError) as exc:  # cleanup must never fail the run
            LOG.warning("could not delete %s: %s", doc_id, exc)
    LoadState.ingested_ids.clear()


@events.quit.add_listener
def close_timeline(**_: Any) -> None:
    # `quit`, not `quitting`: `quitting` fires while users still run, and their last
    # requests would be lost; `quit` comes after every user greenlet has ended.
    if LoadState.timeline is not None:
        LoadState.timeline.close()


def _status_problem(response: Any, expected: tuple[int, ...]) -> str | None:
    if response.status_code == 0:  # connection refused/reset/timeout: never a success
        return f"no response: {response.error!r}"
    if response.status_code not in expected:
        return f"HTTP {response.status_code}: {(response.text or '')[:200]}"
    return None


class RagUser(FastHttpUser):
    """Asks golden questions (most of the time), checks health, and sometimes ingests."""

    network_timeout = 30.0
    connection_timeout = 5.0

    def wait_time(self) -> float:
        """Pace each user at --user-rps tasks/s on average, with every interval drawn from
        [0.5, 1.5] x 1/rps. Plain constant pacing keeps users in lock-step once anything
        stalls the event loop, and bursts every 1/rps would set the timeline's resolution;
        jitter keeps the request stream even."""
        if LoadState.user_rps <= 0:
            return 0.0
        now = time.monotonic()
        interval = random.uniform(0.5, 1.5) / LoadState.user_rps
        planned = getattr(self, "_planned_start", now) + interval
        if planned < now:  # the task ran longer than its interval: start again now
            planned = now
        self._planned_start = planned
        return planned - now

    def on_start(self) -> None:
        self._planned_start = time.monotonic()
        self._questions = itertools.cycle(LoadState.golden.questions)
        # Users start at different questions so all questions are asked early in a short run.
        for _ in range(next(LoadState.user_counter) % len(LoadState.golden.questions)):
            next(self._questions)

    @task(20)
    def ask(self) -> None:
        question = next(self._questions)
        verdict: dict[str, Any] = {}
        with self.client.post(
            "/query",
            json={"question": question.question, "top_k": LoadState.golden.top_k},
            name="POST /query",
            catch_response=True,
            context={"verdict": verdict, "question_id": question.id},
        ) as response:
            problem = _status_problem(response, (200,))
            if problem is None:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                problem = schema_problem(body)
                if problem is None and question.judged:
                    wrong = answer_problem(question, body)
                    verdict["correct"] = wrong is None
                    problem = f"wrong answer to {question.id}: {wrong}" if wrong else None
            if problem:
                response.failure(problem)
            else:
                response.success()

    @task(3)
    def health(self) -> None:
        with self.client.get("/healthz", name="GET /healthz", catch_response=True) as response:
            problem = _status_problem(response, (200,))
            if problem:
                response.failure(problem)
            else:
                response.success()

    @task(1)
    def ingest(self) -> None:
        if not LoadState.ingest_enabled:
            return
        slot = next(LoadState.ingest_counter) % INGEST_ID_SLOTS
        doc_id = f"loadtest-{LoadState.run_id}-{slot}"
        headers = {"X-API-Key": LoadState.api_key} if LoadState.api_key else {}
        with self.client.post(
            "/documents",
            json={
                "id": doc_id,
                "title": f"Load test document {slot}",
                "text": f"Load test run {LoadState.run_id}, slot {slot}. "
                "This document exists only to exercise ingestion under load.",
            },
            headers=headers,
            name="POST /documents",
            catch_response=True,
        ) as response:
            if response.status_code == 401 and not LoadState.api_key:
                LoadState.ingest_enabled = False
                LOG.warning(
                    "POST /documents needs an API key (--api-key / RAG_API_KEY): "
                    "ingests are off for this run"
                )
                response.success()  # the server did the right thing; we lacked the key
                return
            problem = _status_problem(response, (200, 201))
            if problem:
                response.failure(problem)
            else:
                LoadState.ingested_ids.add(doc_id)
                response.success()
