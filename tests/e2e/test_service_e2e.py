"""End-to-end: correct answers through the Service's NodePort on the chosen cluster.

Each test drives one check from ``harness.checks`` (the same code ``harness run`` uses)
and fails with the check's message: the question, the expected and the actual answer.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from harness import checks

pytestmark = pytest.mark.e2e


def _assert(result: checks.CheckResult) -> None:
    assert result.ok, f"{result.name} failed: {result.message}"


def test_golden_questions_answered_correctly(http_client: httpx.Client) -> None:
    result = checks.golden_answers(http_client)
    print(f"golden hit rate: {result.figures.get('hit_rate')} ({result.message.splitlines()[0]})")
    _assert(result)


def test_swagger_ui_and_openapi_through_the_service(http_client: httpx.Client) -> None:
    _assert(checks.docs_reachable(http_client))


def test_tutorial_query_string_form_still_answers(http_client: httpx.Client) -> None:
    response = http_client.post("/query", params={"q": "What is a PodDisruptionBudget?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"].strip(), f"empty answer: {body}"
    assert body["sources"], f"no sources: {body}"


def test_ingested_document_is_answered_by_every_replica(
    http_client: httpx.Client, cluster: Any, api_key: str
) -> None:
    _assert(checks.ingest_everywhere(http_client, cluster.provider, api_key))


def test_documents_survive_deletion_of_every_pod(
    http_client: httpx.Client, cluster: Any, api_key: str
) -> None:
    _assert(checks.survives_pod_loss(http_client, cluster.provider, api_key))


def test_rolling_restart_under_light_traffic_has_no_failed_request(
    cluster: Any, service_url: str
) -> None:
    _assert(checks.rolling_restart_clean(cluster.provider, service_url))


def test_scale_up_uses_new_pod_and_scale_down_keeps_answering(
    cluster: Any, service_url: str, harness_options: Any
) -> None:
    _assert(checks.scale_up_and_down(cluster.provider, service_url, harness_options.replicas))
