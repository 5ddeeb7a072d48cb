"""Assembles the FastAPI app; behaviour lives in the routes and the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from rag_api import __version__
from rag_api.api.routes import documents, health, metrics, query
from rag_api.batching import RetrievalBatcher
from rag_api.errors import install_error_handlers
from rag_api.metrics import ServiceMetrics
from rag_api.middleware import RequestContextMiddleware
from rag_api.service import RagService
from rag_api.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service_metrics = ServiceMetrics()
    service = RagService(settings, service_metrics)
    batcher = RetrievalBatcher(
        service.retrieve,
        workers=settings.embed_workers,
        batch_sizes=service_metrics.retrieval_batch_size,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        batcher.start()
        yield
        await batcher.stop()
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="RAG API",
        version=__version__,
        description="Retrieval-augmented answers over a markdown knowledge base.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = service_metrics
    app.state.service = service
    app.state.batcher = batcher
    app.add_middleware(
        RequestContextMiddleware,
        metrics=service_metrics,
        max_body_bytes=settings.max_body_bytes,
        served_by=settings.pod_name,
    )
    install_error_handlers(app)
    for module in (query, documents, health, metrics):
        app.include_router(module.router)
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn rag_api.main:app` works, yet importing this module reads no environment
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
