"""Liveness and readiness, for Kubernetes probes and the harness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from rag_api.api.deps import ServiceDep
from rag_api.api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves; says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(service: ServiceDep) -> JSONResponse:
    """200 when the store answers, the model is loaded and knowledge is present; else 503."""
    ready, checks = await run_in_threadpool(service.readiness)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
