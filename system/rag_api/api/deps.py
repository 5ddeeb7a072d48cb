"""Dependencies as Annotated aliases: routes declare what they need by type."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from rag_api.batching import RetrievalBatcher
from rag_api.service import RagService
from rag_api.settings import Settings
from rag_api.store import Hit


# `async def`, though nothing here awaits: FastAPI runs a plain `def` dependency in the
# threadpool, and three thread hand-offs per query cost more than the whole extractive answer.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> RagService:
    return request.app.state.service


async def get_batcher(request: Request) -> RetrievalBatcher[list[Hit]]:
    return request.app.state.batcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[RagService, Depends(get_service)]
BatcherDep = Annotated[RetrievalBatcher[list[Hit]], Depends(get_batcher)]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Writes need X-API-Key when RAG_API_KEY is set; compared in constant time."""
    if not settings.api_key:
        return
    if x_api_key is None or x_api_key == "":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing X-API-Key header: writes need the API key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    if not hmac.compare_digest(x_api_key.encode("utf-8"), settings.api_key.encode("utf-8")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="wrong API key")


WriteAccess = Annotated[None, Depends(require_api_key)]
