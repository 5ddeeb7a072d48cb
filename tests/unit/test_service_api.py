"""The API through a real uvicorn (`python -m rag_api`) on loopback, with an embedded chroma
store in a tmp dir, the real model, an API key and no LLM (extractive answers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.unit.service_support import (
    SMALL_KNOWLEDGE,
    TEST_API_KEY,
    ServiceProcess,
    write_knowledge,
)

MAX_DOCUMENT_BYTES = 20_000
WRITE_HEADERS = {"X-API-Key": TEST_API_KEY}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("rag-api")
    settings = {
        "RAG_KNOWLEDGE_DIR": str(write_knowledge(workdir / "knowledge")),
        "RAG_CHROMA_PATH": str(workdir / "chroma"),
        "RAG_API_KEY": TEST_API_KEY,
        "RAG_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES),
        "RAG_CHUNK_CHARS": "300",
    }
    with ServiceProcess(workdir, settings) as running:
        running.wait_ready()
        yield running


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return str(body["detail"])


# -- health, readiness, docs, metrics ------------------------------------------------------------
def test_liveness_readiness_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    checks = body["checks"]
    assert checks["store"] and checks["embedding_model"] and checks["knowledge"]
    assert checks["llm"] == "disabled"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/query", "/documents", "/documents/{doc_id}", "/healthz", "/readyz"} <= set(paths)


def test_query_answers_extractively_from_the_right_document(client: httpx.Client) -> None:
    response = client.post("/query", json={"question": "What is the default NodePort range?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and body["model"] == "extractive"
    assert body["sources"][0]["id"] == "nodeport"
    assert body["sources"][0]["title"] == "NodePort Services"
    assert len(body["sources"]) == 3  # the default top_k
    assert "30000-32767" in body["answer"]
    scores = [source["score"] for source in body["sources"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_tutorial_query_string_form_answers(client: httpx.Client) -> None:
    response = client.post("/query", params={"q": "What does a failing readiness probe do?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"][0]["id"] == "probes"
    assert "readiness probe" in body["answer"]
    one = client.post("/query", params={"q": "What is a pod?", "top_k": 1})
    assert len(one.json()["sources"]) == 1


def test_top_k_sets_the_number_of_sources(client: httpx.Client) -> None:
    body = client.post("/query", json={"question": "pods", "top_k": 2}).json()
    assert len(body["sources"]) == 2


def test_concurrent_questions_get_exactly_what_lone_questions_get(service: ServiceProcess) -> None:
    """Questions arriving together are embedded and looked up in batches; with mixed top_k
    in one batch, each must still get its own answer, sources and scores, as if alone."""
    import asyncio

    asks = [
        (question, top_k)
        for question in (
            "What is a pod?",
            "What is the default NodePort range?",
            "How does a readiness probe differ from a liveness probe?",
            "What is retrieval-augmented generation?",
        )
        for top_k in (1, 2, 3)
    ]
    with service.client() as client:
        alone = [client.post("/query", json={"question": q, "top_k": k}).json() for q, k in asks]

    async def together() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30.0) as http:
            responses = await asyncio.gather(
                *(http.post("/query", json={"question": q, "top_k": k}) for q, k in asks * 3)
            )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json() for r in responses]

    def batches_of_several() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with service.client() as client:
            text = client.get("/metrics").text
        (family,) = (
            f for f in text_string_to_metric_families(text) if f.name == "rag_retrieval_batch_size"
        )
        values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        return (
            values[("rag_retrieval_batch_size_count", None)]
            - values[("rag_retrieval_batch_size_bucket", "1.0")]
        )

    before = batches_of_several()
    concurrent = asyncio.run(together())
    assert concurrent == alone * 3
    assert batches_of_several() > before, "no batch held more than one question: not exercised"


def test_request_id_is_honoured_and_echoed(client: httpx.Client, service: ServiceProcess) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "req-abc.123"})
    assert response.headers["x-request-id"] == "req-abc.123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    # one JSON log line per request with route, method, status, latency and the id
    for _ in range(50):
        lines = [line for line in service.logs(400).splitlines() if "req-abc.123" in line]
        if lines:
            break
        import time

        time.sleep(0.05)
    entry = json.loads(lines[-1])
    assert entry["route"] == "/healthz" and entry["method"] == "GET" and entry["status"] == 200
    assert entry["request_id"] == "req-abc.123" and entry["latency_ms"] >= 0


def test_metrics_count_requests_by_route_template_and_status(client: httpx.Client) -> None:
    client.get("/documents/no-such-doc")
    client.post("/query", json={"question": "What is a pod?"})
    text = client.get("/metrics").text
    assert 'rag_http_requests_total{method="GET",route="/documents/{doc_id}",status="404"}' in text
    assert 'rag_http_request_duration_seconds_bucket{le="0.05",method="POST",route="/query"' in text
    assert 'rag_llm_fallbacks_total{reason="disabled"}' in text
    assert 'rag_store_operation_duration_seconds_count{operation="query",outcome="ok"}' in text
    assert "rag_llm_calls_total 0.0" in text
    assert 'route="/documents/no-such-doc"' not in text  # templates, not raw paths


# -- documents ------------------------------------------------------------------------------------
def test_document_lifecycle_is_idempotent_by_id(client: httpx.Client) -> None:
    long_text = "\n\n".join(
        f"Section {n}: the quokka colony number {n} lives on Rottnest Island near Perth."
        for n in range(12)
    )
    doc = {"id": "quokkas", "title": "Quokkas", "text": long_text}
    created = client.post("/documents", json=doc, headers=WRITE_HEADERS)
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True
    chunks_first = created.json()["chunks"]
    assert chunks_first > 1

    again = client.post("/documents", json=doc, headers=WRITE_HEADERS)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["chunks"] == chunks_first

    fetched = client.get("/documents/quokkas").json()
    assert fetched["title"] == "Quokkas" and fetched["chunks"] == chunks_first
    assert fetched["text"].split() == long_text.split()

    # a shorter version replaces every old chunk, leaving none behind
    short = {"id": "quokkas", "title": "Quokkas (short)", "text": "Quokkas smile a lot."}
    assert client.post("/documents", json=short, headers=WRITE_HEADERS).json()["chunks"] == 1
    fetched = client.get("/documents/quokkas").json()
    assert fetched == {
        "id": "quokkas",
        "title": "Quokkas (short)",
        "chunks": 1,
        "text": short["text"],
    }
    hits = client.post("/query", json={"question": "Where do quokkas live?", "top_k": 10}).json()
    quokka_sources = [s for s in hits["sources"] if s["id"] == "quokkas"]
    assert len(quokka_sources) == 1 and quokka_sources[0]["text"] == short["text"]

    listing = client.get("/documents", params={"limit": 100}).json()
    ids = [item["id"] for item in listing["items"]]
    assert ids.count("quokkas") == 1
    assert set(SMALL_KNOWLEDGE) <= set(ids)

    deleted = client.delete("/documents/quokkas", headers=WRITE_HEADERS)
    assert deleted.status_code == 200 and deleted.json() == {"id": "quokkas", "deleted": True}
    _error(client.get("/documents/quokkas"), 404)
    _error(client.delete("/documents/quokkas", headers=WRITE_HEADERS), 404)


def test_documents_are_paginated(client: httpx.Client) -> None:
    full = client.get("/documents", params={"limit": 200}).json()
    assert full["total"] == len(full["items"]) >= len(SMALL_KNOWLEDGE)
    first = client.get("/documents", params={"limit": 2, "offset": 0}).json()
    second = client.get("/documents", params={"limit": 2, "offset": 2}).json()
    assert (first["limit"], first["offset"], first["total"]) == (2, 0, full["total"])
    assert [i["id"] for i in first["items"] + second["items"]] == [
        i["id"] for i in full["items"][:4]
    ]
    beyond = client.get("/documents", params={"limit": 2, "offset": 1000}).json()
    assert beyond["items"] == [] and beyond["total"] == full["total"]


def test_knowledge_documents_carry_file_stem_ids_and_heading_titles(client: httpx.Client) -> None:
    doc = client.get("/documents/probes").json()
    assert doc["title"] == "Readiness and liveness probes"
    assert "failureThreshold" in doc["text"]


# -- API key --------------------------------------------------------------------------------------
def test_writes_need_the_api_key(client: httpx.Client) -> None:
    doc = {"id": "secret-doc", "title": "T", "text": "Some text."}
    assert "missing X-API-Key" in _error(client.post("/documents", json=doc), 401)
    assert "wrong API key" in _error(
        client.post("/documents", json=doc, headers={"X-API-Key": "not-the-key"}), 403
    )
    _error(client.delete("/documents/pods"), 401)
    _error(client.delete("/documents/pods", headers={"X-API-Key": TEST_API_KEY + "x"}), 403)
    _error(client.get("/documents/secret-doc"), 404)  # nothing was written
    assert client.get("/documents/pods").status_code == 200  # nothing was deleted
    # reads stay open
    assert client.post("/query", json={"question": "pods"}).status_code == 200


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"question": ""}, "empty"),
        ({"question": "   \n\t "}, "empty"),
        ({"question": "x" * 1001}, "limit is 1000"),
        ({"question": "pods", "top_k": 0}, "top_k must be between 1 and 10"),
        ({"question": "pods", "top_k": 11}, "top_k must be between 1 and 10"),
        ({"question": "pods", "top_k": "many"}, "top_k"),
        ({"question": 42}, "question"),
        ({"top_k": 3}, "question"),
        ({"question": "bad \ud800 surrogate"}, "not valid Unicode"),
    ],
)
def test_bad_questions_get_a_clear_4xx(
    client: httpx.Client, payload: object, expected: str
) -> None:
    # json.dumps keeps a lone surrogate as an escape, which is valid JSON
    response = client.post(
        "/query", content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    assert expected in _error(response, 422)


def test_query_with_neither_body_nor_q_is_refused(client: httpx.Client) -> None:
    assert "?q=" in _error(client.post("/query"), 422)
    assert "empty" in _error(client.post("/query", params={"q": "  "}), 422)
    assert "top_k" in _error(client.post("/query", params={"q": "pods", "top_k": 99}), 422)


def test_malformed_json_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/query", content=b'{"question": "pods",', headers={"content-type": "application/json"}
    )
    assert "malformed JSON" in _error(response, 400)


def test_non_utf8_bodies_are_refused_not_500(client: httpx.Client) -> None:
    headers = {"content-type": "application/json", **WRITE_HEADERS}
    raw = b'{"id": "latin", "title": "T", "text": "caf\xe9 cr\xe8me"}'
    response = client.post("/documents", content=raw, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert "UTF-8" in response.json()["detail"]
    _error(client.get("/documents/latin"), 404)
    query = client.post("/query", content=b'{"question": "\xff\xfe"}', headers=headers)
    assert 400 <= query.status_code < 500, query.text


@pytest.mark.parametrize(
    ("document", "expected_status", "expected"),
    [
        ({"id": "bad id!", "title": "T", "text": "x"}, 422, "id"),
        ({"id": "", "title": "T", "text": "x"}, 422, "id"),
        ({"id": "ok", "title": "", "text": "x"}, 422, "title"),
        ({"id": "ok", "title": "   ", "text": "x"}, 422, "title is empty"),
        ({"id": "ok", "title": "T", "text": ""}, 422, "text"),
        ({"id": "ok", "title": "T", "text": "  \n\n  "}, 422, "text is empty"),
        ({"id": "ok", "title": "T"}, 422, "text"),
        ({"id": "ok", "title": "T", "text": "é" * (MAX_DOCUMENT_BYTES // 2 + 1)}, 413, "bytes"),
    ],
)
def test_bad_documents_get_a_clear_4xx_and_write_nothing(
    client: httpx.Client, document: dict[str, str], expected_status: int, expected: str
) -> None:
    before = client.get("/documents", params={"limit": 200}).json()["total"]
    response = client.post("/documents", json=document, headers=WRITE_HEADERS)
    assert expected in _error(response, expected_status)
    assert client.get("/documents", params={"limit": 200}).json()["total"] == before


def test_huge_bodies_are_refused_before_they_are_read(client: httpx.Client) -> None:
    huge = {"id": "huge", "title": "T", "text": "a" * (MAX_DOCUMENT_BYTES * 3)}
    assert "too large" in _error(client.post("/documents", json=huge, headers=WRITE_HEADERS), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
        yield b'{"id": "huge", "title": "T", "text": "'
        for _ in range(MAX_DOCUMENT_BYTES // 1000 * 3):
            yield b"a" * 1000
        yield b'"}'

    response = client.post(
        "/documents",
        content=chunked(),
        headers={"content-type": "application/json", **WRITE_HEADERS},
    )
    assert "too large" in _error(response, 413)
    _error(client.get("/documents/huge"), 404)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/documents/unknown-id", 404),
        ("GET", "/documents/bad%20id", 422),
        ("GET", "/documents?limit=0", 422),
        ("GET", "/documents?limit=201", 422),
        ("GET", "/documents?offset=-1", 422),
        ("GET", "/documents?limit=abc", 422),
        ("GET", "/no-such-route", 404),
        ("GET", "/query", 405),
    ],
)
def test_unknown_ids_and_bad_parameters_get_json_4xx(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    _error(client.request(method, path), status)


def test_a_crash_free_server_after_all_that(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert 'status="500"' not in text, [
        line for line in text.splitlines() if 'status="500"' in line
    ]


def test_data_persists_in_the_configured_chroma_path(service: ServiceProcess) -> None:
    assert Path(service.env["RAG_CHROMA_PATH"], "chroma.sqlite3").is_file()
