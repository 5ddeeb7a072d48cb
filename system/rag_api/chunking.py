"""Markdown and plain text -> retrieval chunks.

Paragraphs are packed greedily up to a character budget; a paragraph longer than the budget
is split at sentence ends, and a sentence longer than the budget at word boundaries. Chunks do
not overlap, so joining a document's chunks with blank lines gives its text back (with
whitespace normalised), which is what `GET /documents/{id}` returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(\[])")
_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
PARAGRAPH_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class MarkdownDocument:
    id: str
    title: str
    text: str


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def _split_long(piece: str, budget: int) -> list[str]:
    """Cut one over-long paragraph into parts of at most `budget` characters."""
    parts: list[str] = []
    current = ""
    for sentence in split_sentences(piece):
        while len(sentence) > budget:  # a run-on sentence: cut at the last space in budget
            cut = sentence.rfind(" ", 0, budget)
            cut = cut if cut > budget // 2 else budget
            if current:
                parts.append(current)
                current = ""
            parts.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > budget:
            parts.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        parts.append(current)
    return [part for part in parts if part]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Non-empty chunks of at most `max_chars` characters, in document order."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    paragraphs = [
        " ".join(p.split()) if not p.lstrip().startswith(("```", "|", "- ", "* ")) else p.strip()
        for p in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n"))
    ]
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if not paragraph:
            continue
        pieces = [paragraph] if len(paragraph) <= max_chars else _split_long(paragraph, max_chars)
        for piece in pieces:
            if current and len(current) + len(PARAGRAPH_SEPARATOR) + len(piece) > max_chars:
                chunks.append(current)
                current = piece
            else:
                current = f"{current}{PARAGRAPH_SEPARATOR}{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def markdown_title(text: str, fallback: str) -> str:
    """The first `# ` heading, else the fallback (the file stem)."""
    match = _HEADING.search(text)
    return match.group(1).strip() if match else fallback


def read_markdown_dir(directory: Path) -> list[MarkdownDocument]:
    """Every `*.md` file in `directory` (not recursive), sorted by name; id = file stem."""
    documents = []
    for path in sorted(directory.glob("*.md")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            continue
        documents.append(
            MarkdownDocument(id=path.stem, title=markdown_title(text, path.stem), text=text)
        )
    return documents
