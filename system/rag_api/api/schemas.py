"""Request and response bodies, as the OpenAPI document at /docs shows them."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DEFAULT_TOP_K = 3


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be stored or embedded
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("contains characters that are not valid Unicode text") from error
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    question: Text = Field(description="What to ask; not empty, at most RAG_MAX_QUESTION_CHARS.")
    top_k: int = Field(DEFAULT_TOP_K, description="Passages to retrieve, 1..RAG_TOP_K_MAX.")


class Source(BaseModel):
    id: str
    title: str
    score: float
    text: str


class QueryResponse(BaseModel):
    answer: str
    sources: list[Source]
    model: str
    degraded: bool


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=DOCUMENT_ID_PATTERN, description="Letters, digits, '.', '_', '-'.")
    title: Text = Field(min_length=1, max_length=300)
    text: Text = Field(min_length=1)


class DocumentWritten(BaseModel):
    id: str
    title: str
    chunks: int
    created: bool


class DocumentSummary(BaseModel):
    id: str
    title: str
    chunks: int
    source: str


class DocumentPage(BaseModel):
    items: list[DocumentSummary]
    total: int
    limit: int
    offset: int


class DocumentOut(BaseModel):
    id: str
    title: str
    chunks: int
    text: str


class DocumentDeleted(BaseModel):
    id: str
    deleted: bool


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, object]
