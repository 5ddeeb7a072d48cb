"""POST /query: retrieve passages and answer (JSON body, or the tutorial's `?q=`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from rag_api.api.deps import BatcherDep, ServiceDep
from rag_api.api.schemas import DEFAULT_TOP_K, QueryRequest, QueryResponse, Source

router = APIRouter(tags=["query"])


@router.post("/query", response_model=QueryResponse)
async def query(
    service: ServiceDep,
    batcher: BatcherDep,
    body: Annotated[QueryRequest | None, Body()] = None,
    q: Annotated[str | None, Query(description="The question, tutorial style, no body.")] = None,
    top_k: Annotated[int | None, Query(alias="top_k")] = None,
) -> QueryResponse:
    settings = service.settings
    if body is not None:
        question, k = body.question, body.top_k
    elif q is not None:
        question, k = q, top_k if top_k is not None else DEFAULT_TOP_K
    else:
        raise HTTPException(
            422,
            detail='send a JSON body {"question": "...", "top_k": 3} or a ?q= query parameter',
        )
    question = question.strip()
    if not question:
        raise HTTPException(422, detail="question is empty")
    if len(question) > settings.max_question_chars:
        raise HTTPException(
            422,
            detail=f"question is {len(question)} characters; the limit is "
            f"{settings.max_question_chars}",
        )
    if not 1 <= k <= settings.top_k_max:
        raise HTTPException(
            422,
            detail=f"top_k must be between 1 and {settings.top_k_max}, got {k}",
        )
    service.embedder  # noqa: B018 - raises NotReady (503) while the model loads
    # embedding and store lookup, batched with concurrent questions, in a worker thread
    hits = await batcher.retrieve(question, k)
    if service.answers_call_out:  # the LLM call blocks: a worker thread
        answer = await run_in_threadpool(service.answer, question, hits)
    else:  # extractive: a little pure Python, cheaper here than a thread hand-off
        answer = service.answer(question, hits)
    return QueryResponse(
        answer=answer.text,
        sources=[Source(id=h.doc_id, title=h.title, score=h.score, text=h.text) for h in hits],
        model=answer.model,
        degraded=answer.degraded,
    )
