"""The golden questions (tests/e2e/golden.yaml) checked against the knowledge base.

The e2e suite asks each golden question through the deployed service and expects the named
document among the sources and the facts in the answer. That can only work if the file is
well formed, every expected document exists, and every fact is literally in that document
(an extractive answer quotes it). These checks need no model and no server.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.golden import load_golden

REPO_ROOT = Path(__file__).resolve().parents[2]
KNOWLEDGE_DIR = REPO_ROOT / "system" / "knowledge"
GOLDEN_PATH = REPO_ROOT / "tests" / "e2e" / "golden.yaml"

MIN_QUESTIONS = 20
MIN_DOCUMENTS = 25
BODY_WORDS = (150, 400)
MAX_FACTS = 3
QUESTION_KEYS = {"id", "question", "expected_doc", "facts"}
TOP_LEVEL_KEYS = {"min_hit_rate", "top_k", "questions"}
KEBAB_CASE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def knowledge_documents(knowledge_dir: Path) -> dict[str, str]:
    """Document id (file stem) -> full text, for every markdown file in the directory."""
    return {path.stem: path.read_text(encoding="utf-8") for path in knowledge_dir.glob("*.md")}


def knowledge_problems(knowledge_dir: Path) -> list[str]:
    """Everything wrong with the knowledge directory; empty when it is fine."""
    documents = knowledge_documents(knowledge_dir)
    problems = []
    if len(documents) < MIN_DOCUMENTS:
        problems.append(f"{len(documents)} documents, need at least {MIN_DOCUMENTS}")
    for doc_id, text in sorted(documents.items()):
        if not KEBAB_CASE.match(doc_id):
            problems.append(f"{doc_id}.md: file name is not lowercase kebab-case")
        lines = text.splitlines()
        if not lines or not re.match(r"^# \S", lines[0]):
            problems.append(f"{doc_id}.md: first line is not a '# Title' heading")
        elif any(line.startswith("# ") for line in lines[1:]):
            problems.append(f"{doc_id}.md: more than one '# ' title line")
        words = len(" ".join(lines[1:]).split())
        if not BODY_WORDS[0] <= words <= BODY_WORDS[1]:
            problems.append(f"{doc_id}.md: {words} words, want {BODY_WORDS[0]}-{BODY_WORDS[1]}")
    return problems


def _question_problems(index: int, entry: Any, documents: dict[str, str]) -> list[str]:
    where = f"question #{index}"
    if not isinstance(entry, dict):
        return [f"{where}: not a mapping"]
    where = f"question #{index} ({entry.get('id')!r})"
    problems = []
    if set(entry) != QUESTION_KEYS:
        problems.append(f"{where}: keys {sorted(entry)}, want {sorted(QUESTION_KEYS)}")
    qid, question = entry.get("id"), entry.get("question")
    if not isinstance(qid, str) or not KEBAB_CASE.match(qid):
        problems.append(f"{where}: id must be a kebab-case slug")
    if not isinstance(question, str) or len(question.strip()) < 10:
        problems.append(f"{where}: question must be a sentence")
    doc_id = entry.get("expected_doc")
    if doc_id not in documents:
        problems.append(f"{where}: expected_doc {doc_id!r} is not a file in the knowledge dir")
    facts = entry.get("facts")
    if (
        not isinstance(facts, list)
        or not 1 <= len(facts) <= MAX_FACTS
        or not all(isinstance(fact, str) and fact.strip() for fact in facts)
    ):
        problems.append(f"{where}: facts must be a list of 1-{MAX_FACTS} non-empty strings")
    elif doc_id in documents:
        text = documents[doc_id].lower()
        problems += [
            f"{where}: fact {fact!r} does not appear in {doc_id}.md"
            for fact in facts
            if fact.lower() not in text
        ]
    return problems


def golden_problems(golden: Any, knowledge_dir: Path) -> list[str]:
    """Everything wrong with a parsed golden file, judged against the knowledge directory."""
    if not isinstance(golden, dict):
        return ["the golden file is not a mapping"]
    problems = []
    if set(golden) != TOP_LEVEL_KEYS:
        problems.append(f"top-level keys {sorted(golden)}, want {sorted(TOP_LEVEL_KEYS)}")
    rate = golden.get("min_hit_rate")
    if not isinstance(rate, float | int) or isinstance(rate, bool) or not 0 < rate <= 1:
        problems.append(f"min_hit_rate {rate!r} must be a number in (0, 1]")
    top_k = golden.get("top_k")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 20:
        problems.append(f"top_k {top_k!r} must be an integer from 1 to 20")
    questions = golden.get("questions")
    if not isinstance(questions, list):
        return [*problems, "questions must be a list"]
    if len(questions) < MIN_QUESTIONS:
        problems.append(f"{len(questions)} questions, need at least {MIN_QUESTIONS}")
    documents = knowledge_documents(knowledge_dir)
    for index, entry in enumerate(questions):
        problems += _question_problems(index, entry, documents)
    ids = [entry.get("id") for entry in questions if isinstance(entry, dict)]
    duplicates = sorted({str(qid) for qid in ids if ids.count(qid) > 1})
    if duplicates:
        problems.append(f"duplicate question ids: {duplicates}")
    asked_about = {entry.get("expected_doc") for entry in questions if isinstance(entry, dict)}
    never_asked = sorted(set(documents) - asked_about)
    if never_asked:
        problems.append(f"documents no question asks about: {never_asked}")
    return problems


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    loaded = yaml.safe_load(GOLDEN_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{GOLDEN_PATH} is not a YAML mapping"
    return loaded


def test_knowledge_base_is_well_formed() -> None:
    assert knowledge_problems(KNOWLEDGE_DIR) == []


def test_golden_file_matches_knowledge_base(golden: dict[str, Any]) -> None:
    assert golden_problems(golden, KNOWLEDGE_DIR) == []


def test_harness_loader_reads_the_same_questions(golden: dict[str, Any]) -> None:
    loaded = load_golden(GOLDEN_PATH)
    assert [q.id for q in loaded.questions] == [q["id"] for q in golden["questions"]]
    assert loaded.top_k == golden["top_k"]
    assert loaded.min_hit_rate == golden["min_hit_rate"]


def _first_fact_elsewhere(golden: dict[str, Any]) -> str:
    """A fact of question 0 replaced by a string no document contains."""
    return golden["questions"][0]["facts"][0] + " and not in any document 7f3a"


BREAKAGES = {
    "duplicate id": (
        lambda g: g["questions"][1].update(id=g["questions"][0]["id"]),
        "duplicate question ids",
    ),
    "missing document": (
        lambda g: g["questions"][0].update(expected_doc="no-such-document"),
        "is not a file in the knowledge dir",
    ),
    "fact not in document": (
        lambda g: g["questions"][0]["facts"].append(_first_fact_elsewhere(g)),
        "does not appear in",
    ),
    "fact from another document": (
        lambda g: g["questions"][0].update(facts=["OOMKilled"], expected_doc="ollama"),
        "does not appear in ollama.md",
    ),
    "too many facts": (
        lambda g: g["questions"][0].update(facts=["a", "b", "c", "d"]),
        "facts must be a list",
    ),
    "too few questions": (
        lambda g: g.update(questions=g["questions"][: MIN_QUESTIONS - 1]),
        "need at least",
    ),
    "hit rate above one": (lambda g: g.update(min_hit_rate=1.5), "min_hit_rate"),
    "unknown key": (lambda g: g["questions"][0].update(answer="x"), "keys"),
    "bad id": (lambda g: g["questions"][0].update(id="Has Spaces"), "kebab-case slug"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_checker_reports_a_broken_golden_file(golden: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(golden)
    mutate, expected_message = BREAKAGES[breakage]
    mutate(broken)
    problems = golden_problems(broken, KNOWLEDGE_DIR)
    assert any(expected_message in problem for problem in problems), problems


def test_checker_reports_a_broken_knowledge_dir(tmp_path: Path) -> None:
    for path in sorted(KNOWLEDGE_DIR.glob("*.md"))[:3]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "No_Title.md").write_text("plain text, no heading\n" + "word " * 200)
    (tmp_path / "too-short.md").write_text("# Short\n\nOnly a few words here.\n")
    problems = knowledge_problems(tmp_path)
    assert any("need at least" in p for p in problems), problems
    assert any("No_Title.md: file name" in p for p in problems), problems
    assert any("No_Title.md: first line" in p for p in problems), problems
    assert any("too-short.md: 5 words" in p for p in problems), problems
