"""Prometheus metrics, kept in a registry per app so two apps in one process never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rag_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "rag_http_request_duration_seconds",
            "HTTP request latency by route template, method and status code.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "rag_http_requests_in_flight", "Requests being served now.", registry=self.registry
        )
        self.llm_calls = Counter(
            "rag_llm_calls_total", "Calls made to the LLM (Ollama).", registry=self.registry
        )
        self.llm_failures = Counter(
            "rag_llm_failures_total",
            "LLM calls that failed, by reason (timeout, connection, error).",
            ["reason"],
            registry=self.registry,
        )
        self.llm_fallbacks = Counter(
            "rag_llm_fallbacks_total",
            "Answers given extractively instead of by the LLM, by reason "
            "(disabled, breaker_open, failed).",
            ["reason"],
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "rag_llm_breaker_open",
            "1 while the LLM circuit breaker is open.",
            registry=self.registry,
        )
        self.store_latency = Histogram(
            "rag_store_operation_duration_seconds",
            "Vector store call latency by operation and outcome.",
            ["operation", "outcome"],
            buckets=_STORE_BUCKETS,
            registry=self.registry,
        )
        self.retrieval_batch_size = Histogram(
            "rag_retrieval_batch_size",
            "Questions embedded and looked up together in one batch.",
            buckets=(1, 2, 4, 8, 16),
            registry=self.registry,
        )
        self.documents_indexed = Counter(
            "rag_documents_indexed_total",
            "Documents written to the store (knowledge load and API ingest).",
            ["source"],
            registry=self.registry,
        )
