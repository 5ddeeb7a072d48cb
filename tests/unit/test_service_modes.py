"""The service in its other modes, each a real `python -m rag_api`: the chroma server store
(`chroma run`), a dead, a hanging and an answering Ollama (stand-ins), and SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.standins.ollama_standin import AnsweringOllamaStandIn, HangingOllamaStandIn
from tests.unit.service_support import (
    SMALL_KNOWLEDGE,
    ChromaServer,
    ServiceProcess,
    closed_port,
    write_knowledge,
)

QUESTION = {"question": "What is the default NodePort range?"}


def _embedded(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "RAG_KNOWLEDGE_DIR": str(write_knowledge(tmp_path / "knowledge")),
        "RAG_CHROMA_PATH": str(tmp_path / "chroma"),
        **extra,
    }


def test_http_store_shared_by_two_replicas_started_together(tmp_path: Path) -> None:
    knowledge = write_knowledge(tmp_path / "knowledge")
    with ChromaServer(tmp_path) as chroma:
        settings = {
            "RAG_STORE": "http",
            "RAG_CHROMA_HOST": "127.0.0.1",
            "RAG_CHROMA_PORT": str(chroma.port),
            "RAG_KNOWLEDGE_DIR": str(knowledge),
        }
        first = ServiceProcess(tmp_path, settings, name="replica-a")
        second = ServiceProcess(tmp_path, settings, name="replica-b")
        try:
            first.start()
            second.start()  # both find an empty collection and load it at the same time
            ready_a, ready_b = first.wait_ready(), second.wait_ready()
            # deterministic chunk ids: the concurrent loads converge, no duplicate chunks
            assert (
                ready_a["checks"]["chunks"] == ready_b["checks"]["chunks"] == len(SMALL_KNOWLEDGE)
            )  # type: ignore[index]
            with first.client() as a, second.client() as b:
                doc = {"id": "shared", "title": "Shared", "text": "Written on replica A only."}
                assert a.post("/documents", json=doc).status_code == 201
                assert b.get("/documents/shared").json()["text"] == doc["text"]  # read on B
                answer = b.post("/query", json=QUESTION).json()
                assert answer["sources"][0]["id"] == "nodeport"

                chroma.stop()  # the store goes away: a clear 503, not a 500
                response = a.post("/query", json=QUESTION)
                assert response.status_code == 503, response.text
                assert "vector store" in response.json()["detail"]
                assert b.post("/documents", json=doc).status_code == 503
                ready = a.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["store"] is False
                assert a.get("/healthz").status_code == 200  # alive, only not ready
        finally:
            exit_codes = (first.terminate(), second.terminate())  # both stop, whatever happened
    assert exit_codes == (0, 0), f"{first.logs()}\n{second.logs()}"


def test_store_unreachable_at_start_means_not_ready_with_a_reason(tmp_path: Path) -> None:
    settings = {
        "RAG_STORE": "http",
        "RAG_CHROMA_HOST": "127.0.0.1",
        "RAG_CHROMA_PORT": str(closed_port()),
        "RAG_KNOWLEDGE_DIR": str(write_knowledge(tmp_path / "knowledge")),
    }
    with ServiceProcess(tmp_path, settings) as service, service.client() as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ready = client.get("/readyz")
                if ready.json()["checks"].get("embedding_model"):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] is False
        assert "vector store" in ready.json()["checks"]["store_error"]
        response = client.post("/query", json=QUESTION)
        assert response.status_code == 503, response.text


def test_dead_ollama_degrades_to_extractive_answers_fast(tmp_path: Path) -> None:
    settings = _embedded(
        tmp_path, RAG_OLLAMA_HOST=f"http://127.0.0.1:{closed_port()}", RAG_LLM_TIMEOUT_S="5"
    )
    with ServiceProcess(tmp_path, settings) as service, service.client() as client:
        service.wait_ready()
        for _ in range(5):  # enough to open the breaker (3 failures) and answer past it
            started = time.monotonic()
            body = client.post("/query", json=QUESTION).json()
            assert time.monotonic() - started < 3, "a refused connection must not wait a timeout"
            assert body["degraded"] is True and body["model"] == "extractive"
            assert "30000-32767" in body["answer"]
        metrics = client.get("/metrics").text
        assert 'rag_llm_failures_total{reason="connection"}' in metrics
        assert 'rag_llm_fallbacks_total{reason="breaker_open"}' in metrics
        assert client.get("/readyz").json()["checks"]["llm"] == "open"


def test_hanging_ollama_costs_one_timeout_then_fails_fast(tmp_path: Path) -> None:
    with HangingOllamaStandIn() as hanging:
        settings = _embedded(
            tmp_path, RAG_OLLAMA_HOST=hanging.url, RAG_LLM_TIMEOUT_S="1", RAG_BREAKER_RESET_S="60"
        )
        with ServiceProcess(tmp_path, settings) as service, service.client() as client:
            service.wait_ready()
            started = time.monotonic()
            first = client.post("/query", json=QUESTION)
            first_s = time.monotonic() - started
            assert first.status_code == 200 and first.json()["degraded"] is True
            assert 0.9 <= first_s < 4, f"first call took {first_s:.2f}s; expected one 1 s timeout"
            assert hanging.accepted >= 1
            started = time.monotonic()
            second = client.post("/query", json=QUESTION)
            second_s = time.monotonic() - started
            assert second.json()["degraded"] is True
            assert second_s < 0.5, f"breaker open, yet the second call took {second_s:.2f}s"
            assert 'rag_llm_failures_total{reason="timeout"} 1.0' in client.get("/metrics").text


def test_reachable_ollama_answers_and_is_not_degraded(tmp_path: Path) -> None:
    reply = "The default NodePort range is 30000-32767 (stand-in answer)."
    with AnsweringOllamaStandIn(reply) as ollama:
        settings = _embedded(tmp_path, RAG_OLLAMA_HOST=ollama.url, RAG_OLLAMA_MODEL="tiny:1b")
        with ServiceProcess(tmp_path, settings) as service, service.client() as client:
            service.wait_ready()
            body = client.post("/query", json=QUESTION).json()
    assert body["degraded"] is False
    assert body["model"] == "tiny:1b"
    assert body["answer"] == reply
    assert body["sources"][0]["id"] == "nodeport"
    sent = ollama.requests[-1]["body"]
    assert sent["model"] == "tiny:1b" and sent["stream"] is False
    assert "NodePort" in sent["messages"][-1]["content"]  # the retrieved passages went along


def test_sigterm_finishes_the_in_flight_request_then_exits_cleanly(tmp_path: Path) -> None:
    # the hanging stand-in makes a query slow (3 s LLM timeout) without any test-only hook
    with HangingOllamaStandIn() as hanging:
        settings = _embedded(
            tmp_path,
            RAG_OLLAMA_HOST=hanging.url,
            RAG_LLM_TIMEOUT_S="3",
            RAG_SHUTDOWN_TIMEOUT_S="10",
        )
        service = ServiceProcess(tmp_path, settings).start()
        try:
            service.wait_ready()
            outcome: dict[str, object] = {}

            def slow_query() -> None:
                with service.client() as client:
                    try:
                        outcome["response"] = client.post("/query", json=QUESTION)
                    except httpx.HTTPError as error:
                        outcome["error"] = error

            in_flight = threading.Thread(target=slow_query)
            in_flight.start()
            deadline = time.monotonic() + 10
            while hanging.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hanging.accepted, f"the query never reached the LLM stand-in\n{service.logs()}"
            assert service.process is not None
            service.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no longer accepting
                httpx.get(service.url + "/healthz", timeout=2)
            code = service.process.wait(timeout=15)
            exited_s = time.monotonic() - signalled
            in_flight.join(timeout=10)
        finally:
            service.terminate()
    assert "error" not in outcome, outcome
    response = outcome["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json()["degraded"] is True
    assert code == 0, service.logs()
    assert exited_s < 10, f"exit took {exited_s:.1f}s, past the 10 s grace period"


def test_invalid_settings_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, {"RAG_STORE": "postgres", "RAG_API_KEY": "short"})
    service.start()
    assert service.process is not None
    code = service.process.wait(timeout=30)
    log = service.logs()
    assert code == 2, log
    assert "RAG_STORE" in log and "RAG_API_KEY" in log and "at least 16" in log


def test_sigterm_drains_keep_alive_clients_before_closing(tmp_path: Path) -> None:
    """After SIGTERM a request on an open keep-alive connection is still served, told to
    reconnect (Connection: close); new connections are refused; the process then exits."""
    service = ServiceProcess(tmp_path, _embedded(tmp_path, RAG_DRAIN_S="5")).start()
    try:
        service.wait_ready()
        assert service.process is not None
        with service.client() as client:
            first = client.get("/healthz")
            assert first.status_code == 200 and first.headers.get("connection") != "close"
            service.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)  # past the server's next tick: listeners closed, draining
            with pytest.raises(httpx.TransportError):  # a new connection is refused
                httpx.get(service.url + "/healthz", timeout=2)
            second = client.post("/query", json=QUESTION)  # the same keep-alive connection
            assert second.status_code == 200, second.text
            assert second.headers.get("connection") == "close", second.headers
        code = service.process.wait(timeout=15)
        exited_s = time.monotonic() - signalled
    finally:
        service.terminate()
    assert code == 0, service.logs()
    assert "stopped by signal" in service.logs(50), service.logs(50)
    # the client closed its connection on `Connection: close`: the drain ends early
    assert exited_s < 5, f"exit took {exited_s:.1f}s; the drain should end with the last client"
