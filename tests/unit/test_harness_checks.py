"""The e2e checks fail with messages a person can act on: question, expected, actual.

They run against the RAG API stand-in (tests/standins), which answers the golden questions
from a table and can be told to answer some of them wrongly, or be taken down.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from harness import checks
from harness.golden import GoldenSet, load_golden
from tests.standins.rag_api_standin import RagApiStandIn


@pytest.fixture(scope="module")
def golden() -> GoldenSet:
    full = load_golden()
    return replace(full, questions=full.questions[:6], min_hit_rate=1.0)


@pytest.fixture
def standin(golden: GoldenSet) -> Iterator[RagApiStandIn]:
    questions = [
        {"question": q.question, "expected_doc": q.expected_doc, "facts": list(q.facts)}
        for q in golden.questions
    ]
    server = RagApiStandIn(questions, wrong=[golden.questions[2].question]).start()
    try:
        yield server
    finally:
        server.stop()


def test_all_right_answers_pass(golden: GoldenSet, standin: RagApiStandIn) -> None:
    standin.wrong.clear()
    with httpx.Client(base_url=standin.url, timeout=5) as client:
        result = checks.golden_answers(client, golden)
    assert result.ok, result.message
    assert result.figures["hit_rate"] == 1.0


def test_a_wrong_answer_fails_naming_question_expected_and_actual(
    golden: GoldenSet, standin: RagApiStandIn
) -> None:
    wrong = golden.questions[2]
    with httpx.Client(base_url=standin.url, timeout=5) as client:
        result = checks.golden_answers(client, golden)
    assert not result.ok
    assert result.figures["hits"] == len(golden.questions) - 1
    assert wrong.id in result.message and wrong.question in result.message
    assert f"expected document {wrong.expected_doc!r} not among sources ['unrelated']" in (
        result.message
    )
    assert "answer was 'I do not know.'" in result.message


def test_a_dead_service_fails_the_check_with_the_cause(
    golden: GoldenSet, standin: RagApiStandIn
) -> None:
    standin.stop()
    with httpx.Client(base_url=standin.url, timeout=2) as client:
        result = checks.golden_answers(client, golden)
    assert not result.ok
    assert "ConnectError" in result.message
