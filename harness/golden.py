"""Golden questions: load ``tests/e2e/golden.yaml`` and judge an answer against one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.settings import REPO_ROOT

GOLDEN_PATH = REPO_ROOT / "tests" / "e2e" / "golden.yaml"


class GoldenFileError(ValueError):
    """The golden file is missing or malformed; the message says where."""


@dataclass(frozen=True)
class GoldenQuestion:
    id: str
    question: str
    expected_doc: str
    facts: tuple[str, ...]


@dataclass(frozen=True)
class GoldenSet:
    questions: tuple[GoldenQuestion, ...]
    min_hit_rate: float
    top_k: int


@dataclass(frozen=True)
class Verdict:
    """How one answer measured up; ``hit`` needs the document and every fact."""

    question: GoldenQuestion
    doc_found: bool
    missing_facts: tuple[str, ...]
    answer: str
    source_ids: tuple[str, ...]
    degraded: bool | None

    @property
    def hit(self) -> bool:
        return self.doc_found and not self.missing_facts

    def explain(self) -> str:
        problems = []
        if not self.doc_found:
            problems.append(
                f"expected document {self.question.expected_doc!r} not among sources "
                f"{list(self.source_ids)}"
            )
        if self.missing_facts:
            problems.append(f"answer lacks facts {list(self.missing_facts)}")
        return (
            f"question {self.question.id!r} ({self.question.question!r}): "
            + "; ".join(problems)
            + f"; answer was {self.answer[:300]!r}"
        )


def load_golden(path: Path = GOLDEN_PATH) -> GoldenSet:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GoldenFileError(f"golden file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise GoldenFileError(f"golden file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list):
        raise GoldenFileError(f"{path}: expected a mapping with a 'questions' list")
    questions = []
    for index, entry in enumerate(raw["questions"]):
        try:
            facts = entry.get("facts") or []
            questions.append(
                GoldenQuestion(
                    id=str(entry["id"]),
                    question=str(entry["question"]),
                    expected_doc=str(entry["expected_doc"]),
                    facts=tuple(str(fact) for fact in facts),
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise GoldenFileError(f"{path}: question #{index} is malformed: {exc!r}") from exc
    min_hit_rate = float(raw.get("min_hit_rate", 0.9))
    if not 0.0 < min_hit_rate <= 1.0:
        raise GoldenFileError(f"{path}: min_hit_rate must be in (0, 1], got {min_hit_rate}")
    return GoldenSet(
        questions=tuple(questions), min_hit_rate=min_hit_rate, top_k=int(raw.get("top_k", 3))
    )


def judge(question: GoldenQuestion, body: Any) -> Verdict:
    """Judge a /query response body (already decoded JSON) against a golden question."""
    answer = str(body.get("answer", "")) if isinstance(body, dict) else ""
    sources = body.get("sources", []) if isinstance(body, dict) else []
    source_ids = tuple(str(s.get("id", "")) for s in sources if isinstance(s, dict))
    lowered = answer.lower()
    missing = tuple(fact for fact in question.facts if fact.lower() not in lowered)
    degraded = body.get("degraded") if isinstance(body, dict) else None
    return Verdict(
        question=question,
        doc_found=question.expected_doc in source_ids,
        missing_facts=missing,
        answer=answer,
        source_ids=source_ids,
        degraded=degraded,
    )
