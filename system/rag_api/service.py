"""The RAG service's behaviour, independent of HTTP: retrieval, answers, documents, readiness.

The embedding model and the knowledge base are brought up in a background thread so the
process answers /healthz at once and /readyz tells the truth while it warms up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag_api.chunking import chunk_text, read_markdown_dir
from rag_api.embeddings import MiniLMEmbedder, shared_embedder
from rag_api.generation import Answer, Generator
from rag_api.metrics import ServiceMetrics
from rag_api.settings import Settings
from rag_api.store import Hit, StoredDocument, StoreUnavailable, VectorStore, chunk_id

log = logging.getLogger("rag_api.service")

# retry pace of the background start-up while the store is unreachable
_STARTUP_RETRY_MIN_S = 0.5
_STARTUP_RETRY_MAX_S = 5.0


class NotReady(RuntimeError):
    """The embedding model is still loading; the caller should try again shortly."""


@dataclass
class QueryResult:
    answer: Answer
    hits: list[Hit]


@dataclass
class StartupState:
    model_loaded: bool = False
    knowledge_checked: bool = False
    knowledge_loaded_documents: int = 0
    last_error: str = ""
    finished: threading.Event = field(default_factory=threading.Event)


def embedding_text(title: str, chunk: str) -> str:
    """What gets embedded for a chunk: its document title gives short chunks their topic."""
    return f"{title}\n{chunk}" if title and not chunk.startswith(f"# {title}") else chunk


class RagService:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = VectorStore(settings, metrics)
        self.generator = Generator(settings, metrics)
        self.startup = StartupState()
        self._embedder: MiniLMEmbedder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._bring_up, name="rag-startup", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _bring_up(self) -> None:
        started = time.monotonic()
        # open the store while the model loads: both are mostly native work, and start-to-ready
        # is what a rolling update waits for
        warm_store = threading.Thread(target=self._warm_store, name="rag-store-warm", daemon=True)
        warm_store.start()
        try:
            self._embedder = shared_embedder(
                self.settings.embed_threads, self.settings.embed_model_path
            )
            self.startup.model_loaded = True
        except Exception as error:  # a broken model install: not ready, say why
            self.startup.last_error = f"embedding model failed to load: {error!r}"
            log.exception("embedding model failed to load")
            return
        delay = _STARTUP_RETRY_MIN_S
        while not self._stop.is_set():
            try:
                self.startup.knowledge_loaded_documents = self.load_knowledge_if_empty()
                self.startup.knowledge_checked = True
                self.startup.last_error = ""
                break
            except StoreUnavailable as error:
                self.startup.last_error = str(error)
                self._stop.wait(delay)
                delay = min(delay * 2, _STARTUP_RETRY_MAX_S)
        self.startup.finished.set()
        log.info(
            "start-up finished",
            extra={
                "seconds": round(time.monotonic() - started, 3),
                "knowledge_loaded_documents": self.startup.knowledge_loaded_documents,
            },
        )

    def _warm_store(self) -> None:
        try:
            self.store.collection()
        except Exception as error:  # the start-up loop below retries and reports it
            log.info("store not reachable yet", extra={"error": repr(error)})

    @property
    def embedder(self) -> MiniLMEmbedder:
        if self._embedder is None:
            raise NotReady("the embedding model is still loading")
        return self._embedder

    # knowledge ---------------------------------------------------------------------------
    def load_knowledge_if_empty(self) -> int:
        """Index the knowledge directory when the collection is empty; returns documents written.

        All chunks go in one upsert with deterministic ids, so replicas starting together
        write the same rows and no replica sees a half-loaded knowledge base.
        """
        if self.store.count() > 0:
            return 0
        directory = self.settings.knowledge_dir
        if not directory.is_dir():
            log.warning("knowledge directory missing", extra={"path": str(directory)})
            return 0
        documents = read_markdown_dir(directory)
        ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict[str, Any]] = []
        for document in documents:
            chunks = chunk_text(document.text, self.settings.chunk_chars)
            for index, chunk in enumerate(chunks):
                ids.append(chunk_id(document.id, index))
                texts.append(chunk)
                metadatas.append(
                    {
                        "doc_id": document.id,
                        "title": document.title,
                        "chunk_index": index,
                        "chunk_count": len(chunks),
                        "source": "knowledge",
                    }
                )
        if not ids:
            return 0
        vectors = self.embedder.embed(
            [embedding_text(str(m["title"]), t) for m, t in zip(metadatas, texts, strict=True)]
        )
        self.store.upsert_rows(ids, vectors.tolist(), texts, metadatas)
        self.metrics.documents_indexed.labels("knowledge").inc(len(documents))
        log.info("knowledge indexed", extra={"documents": len(documents), "chunks": len(ids)})
        return len(documents)

    # queries -----------------------------------------------------------------------------
    def query(self, question: str, top_k: int) -> QueryResult:
        hits = self.retrieve([question], top_k)[0]
        return QueryResult(answer=self.answer(question, hits), hits=hits)

    def retrieve(self, questions: Sequence[str], top_k: int) -> list[list[Hit]]:
        """The top_k passages for each question: one embedding run and one store call."""
        vectors = self.embedder.embed(questions)
        return self.store.query_many(vectors.tolist(), top_k)

    def answer(self, question: str, hits: Sequence[Hit]) -> Answer:
        return self.generator.answer(question, hits)

    @property
    def answers_call_out(self) -> bool:
        """True when answering may wait on the LLM (so it belongs in a worker thread)."""
        return self.generator.calls_llm

    # documents ---------------------------------------------------------------------------
    def ingest(self, doc_id: str, title: str, text: str) -> int:
        """Chunk, embed, then write; nothing is written unless every step before succeeded."""
        chunks = chunk_text(text, self.settings.chunk_chars)
        if not chunks:
            raise ValueError("the document has no text once whitespace is removed")
        vectors = self.embedder.embed([embedding_text(title, chunk) for chunk in chunks])
        self.store.upsert_document(doc_id, title, chunks, vectors.tolist(), source="api")
        self.metrics.documents_indexed.labels("api").inc()
        return len(chunks)

    def get_document(self, doc_id: str) -> StoredDocument | None:
        return self.store.get_document(doc_id)

    def list_documents(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        return self.store.list_documents(limit, offset)

    def delete_document(self, doc_id: str) -> bool:
        return self.store.delete_document(doc_id)

    # readiness ---------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"embedding_model": self.startup.model_loaded}
        if self._embedder is not None:
            checks["embedding_model_file"] = self._embedder.model_path.name
        try:
            count = self.store.count()
            checks["store"] = True
            checks["knowledge"] = count > 0
            checks["chunks"] = count
        except StoreUnavailable as error:
            checks["store"] = False
            checks["knowledge"] = False
            checks["store_error"] = str(error)
        if self.startup.last_error:
            checks["startup_error"] = self.startup.last_error
        checks["llm"] = (
            "disabled" if not self.settings.llm_enabled else self.generator.breaker.state
        )
        ready = bool(checks["embedding_model"] and checks["store"] and checks["knowledge"])
        return ready, checks
