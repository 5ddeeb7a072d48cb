"""Retrieval over the real knowledge base (system/knowledge) for the golden questions in
tests/e2e/golden.yaml, through a real `python -m rag_api` with an embedded store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.service_support import REPO_ROOT, ServiceProcess

GOLDEN_PATH = REPO_ROOT / "tests" / "e2e" / "golden.yaml"
KNOWLEDGE_DIR = REPO_ROOT / "system" / "knowledge"


def _golden() -> dict[str, Any]:
    return dict(yaml.safe_load(GOLDEN_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("rag-golden")
    settings = {"RAG_CHROMA_PATH": str(workdir / "chroma")}  # knowledge: the default dir
    with ServiceProcess(workdir, settings) as running:
        running.wait_ready(timeout_s=120)  # indexes the whole knowledge base first
        yield running


def test_the_default_knowledge_dir_is_the_one_beside_the_package(service: ServiceProcess) -> None:
    with service.client() as client:
        listing = client.get("/documents", params={"limit": 200}).json()
    assert {item["id"] for item in listing["items"]} == {p.stem for p in KNOWLEDGE_DIR.glob("*.md")}


def test_golden_questions_retrieve_their_documents(service: ServiceProcess) -> None:
    golden = _golden()
    questions = golden["questions"]
    assert len(questions) >= 20, f"only {len(questions)} golden questions"
    misses = []
    with service.client() as client:
        for entry in questions:
            response = client.post(
                "/query", json={"question": entry["question"], "top_k": golden.get("top_k", 3)}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            source_ids = [source["id"] for source in body["sources"]]
            seen_text = (
                body["answer"] + " " + " ".join(s["text"] for s in body["sources"])
            ).lower()
            missing = [fact for fact in entry.get("facts", []) if fact.lower() not in seen_text]
            if entry["expected_doc"] not in source_ids or missing:
                misses.append(
                    f"{entry['id']}: expected {entry['expected_doc']!r} in {source_ids}"
                    + (f", facts missing {missing}" if missing else "")
                )
    hit_rate = 1 - len(misses) / len(questions)
    print(f"golden retrieval hit rate {hit_rate:.2f} over {len(questions)} questions")
    assert hit_rate >= float(golden.get("min_hit_rate", 0.9)), "\n".join(misses)


def test_unchanged_knowledge_is_not_reindexed_on_restart(
    service: ServiceProcess, tmp_path: Path
) -> None:
    with service.client() as client:
        chunks = client.get("/readyz").json()["checks"]["chunks"]
    second = ServiceProcess(tmp_path, {"RAG_CHROMA_PATH": service.env["RAG_CHROMA_PATH"]})
    # both processes open one embedded store only for reads here; the first stops first
    service.terminate()
    with second:
        ready = second.wait_ready()
        assert ready["checks"]["chunks"] == chunks  # type: ignore[index]
    assert "knowledge indexed" not in second.logs(200)
