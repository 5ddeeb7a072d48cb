"""/documents: ingest (idempotent by id), list, read and delete knowledge documents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from starlette.concurrency import run_in_threadpool

from rag_api.api.deps import ServiceDep, WriteAccess
from rag_api.api.schemas import (
    DOCUMENT_ID_PATTERN,
    DocumentDeleted,
    DocumentIn,
    DocumentOut,
    DocumentPage,
    DocumentSummary,
    DocumentWritten,
)
from rag_api.chunking import PARAGRAPH_SEPARATOR

router = APIRouter(prefix="/documents", tags=["documents"])
DocumentId = Annotated[str, Path(pattern=DOCUMENT_ID_PATTERN)]


@router.post("", response_model=DocumentWritten)
async def ingest_document(
    document: DocumentIn, service: ServiceDep, _: WriteAccess, response: Response
) -> DocumentWritten:
    size = len(document.text.encode("utf-8"))
    limit = service.settings.max_document_bytes
    if size > limit:
        raise HTTPException(
            413,
            detail=f"document text is {size} bytes; the limit is {limit} (RAG_MAX_DOCUMENT_BYTES)",
        )
    title = document.title.strip()
    if not title:
        raise HTTPException(422, detail="title is empty")
    if not document.text.strip():
        raise HTTPException(422, detail="text is empty")

    def write() -> tuple[bool, int]:
        existed = service.get_document(document.id) is not None
        return existed, service.ingest(document.id, title, document.text)

    existed, chunks = await run_in_threadpool(write)
    response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
    return DocumentWritten(id=document.id, title=title, chunks=chunks, created=not existed)


@router.get("", response_model=DocumentPage)
async def list_documents(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> DocumentPage:
    if limit > service.settings.page_size_max:
        raise HTTPException(
            422,
            detail=f"limit must be between 1 and {service.settings.page_size_max}, got {limit}",
        )
    items, total = await run_in_threadpool(service.list_documents, limit, offset)
    return DocumentPage(
        items=[DocumentSummary(**item) for item in items], total=total, limit=limit, offset=offset
    )


@router.get("/{doc_id}", response_model=DocumentOut)
async def get_document(doc_id: DocumentId, service: ServiceDep) -> DocumentOut:
    stored = await run_in_threadpool(service.get_document, doc_id)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no document with id {doc_id!r}")
    return DocumentOut(
        id=stored.id,
        title=stored.title,
        chunks=len(stored.chunks),
        text=PARAGRAPH_SEPARATOR.join(stored.chunks),
    )


@router.delete("/{doc_id}", response_model=DocumentDeleted)
async def delete_document(
    doc_id: DocumentId, service: ServiceDep, _: WriteAccess
) -> DocumentDeleted:
    deleted = await run_in_threadpool(service.delete_document, doc_id)
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no document with id {doc_id!r}")
    return DocumentDeleted(id=doc_id, deleted=True)
