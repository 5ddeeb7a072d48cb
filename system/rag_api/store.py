"""The vector store: one chroma collection, embedded (PersistentClient) or remote (HttpClient).

Chunk ids are deterministic (`<doc id>#<index>`), so writing a document twice, or two replicas
loading the knowledge base at the same moment, converges on the same rows. Every call that
fails is raised as StoreUnavailable, which the API turns into a 503 with the cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rag_api.metrics import ServiceMetrics
from rag_api.settings import Settings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

log = logging.getLogger("rag_api.store")
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The vector store could not be reached or refused the call."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    text: str
    score: float  # cosine similarity, 1.0 = same direction


@dataclass(frozen=True)
class StoredDocument:
    id: str
    title: str
    chunks: list[str]


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index:05d}"


class VectorStore:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._lock = threading.Lock()
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None

    @property
    def description(self) -> str:
        s = self._settings
        if s.store == "http":
            return f"chroma server http://{s.chroma_host}:{s.chroma_port}"
        return f"embedded chroma at {s.chroma_path}"

    # connection --------------------------------------------------------------------------
    def _connect(self) -> Collection:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        s = self._settings
        client: ClientAPI
        if s.store == "http":
            client = chromadb.HttpClient(
                host=s.chroma_host, port=s.chroma_port, settings=chroma_settings
            )
        else:
            s.chroma_path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(s.chroma_path), settings=chroma_settings)
        # embedding_function=None: we always pass vectors; chroma's default would download one
        collection = client.get_or_create_collection(
            name=s.collection,
            metadata={"hnsw:space": "cosine"},
            embedding_function=None,
        )
        self._client = client
        return collection

    def collection(self) -> Collection:
        """The collection, connecting on first use and again after a failure."""
        collection = self._collection
        if collection is not None:
            return collection
        with self._lock:
            if self._collection is None:
                self._collection = self._connect()
            return self._collection

    def _forget_connection(self) -> None:
        with self._lock:
            self._collection = None
            self._client = None

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self._metrics.store_latency.labels(operation, outcome).observe(
                time.perf_counter() - started
            )

    def _call(self, operation: str, action: Callable[[Collection], T]) -> T:
        with self._timed(operation):
            try:
                return action(self.collection())
            except StoreUnavailable:
                raise
            except Exception as error:
                # an http client keeps no broken state worth keeping; reconnect next time
                if self._settings.store == "http":
                    self._forget_connection()
                log.warning(
                    "store call failed",
                    extra={"operation": operation, "error": f"{type(error).__name__}: {error}"},
                )
                raise StoreUnavailable(
                    f"vector store ({self.description}) failed during {operation}: "
                    f"{type(error).__name__}: {error}"
                ) from error

    # reads -------------------------------------------------------------------------------
    def count(self) -> int:
        return self._call("count", lambda c: c.count())

    def query(self, embedding: Sequence[float], top_k: int) -> list[Hit]:
        return self.query_many([embedding], top_k)[0]

    def query_many(self, embeddings: Sequence[Sequence[float]], top_k: int) -> list[list[Hit]]:
        """The top_k hits for each vector, from one chroma call (its cost is mostly per call)."""

        def run(c: Collection) -> list[list[Hit]]:
            result = c.query(
                query_embeddings=[list(vector) for vector in embeddings],  # type: ignore[arg-type]
                n_results=top_k,
                include=["documents", "metadatas", "distances"],
            )
            documents = result.get("documents") or []
            metadatas = result.get("metadatas") or []
            distances = result.get("distances") or []
            return [
                [
                    Hit(
                        doc_id=str(meta.get("doc_id", "")),
                        title=str(meta.get("title", "")),
                        text=text or "",
                        score=round(1.0 - float(distance), 4),
                    )
                    for text, meta, distance in zip(
                        documents[row], metadatas[row], distances[row], strict=False
                    )
                ]
                if row < len(distances)
                else []
                for row in range(len(embeddings))
            ]

        if not embeddings:
            return []
        return self._call("query", run)

    def get_document(self, doc_id: str) -> StoredDocument | None:
        def run(c: Collection) -> StoredDocument | None:
            result = c.get(where={"doc_id": doc_id}, include=["documents", "metadatas"])
            rows = sorted(
                zip(result.get("metadatas") or [], result.get("documents") or [], strict=False),
                key=lambda row: int(row[0].get("chunk_index", 0)),  # type: ignore[arg-type]
            )
            if not rows:
                return None
            return StoredDocument(
                id=doc_id, title=str(rows[0][0].get("title", "")), chunks=[text for _, text in rows]
            )

        return self._call("get", run)

    def list_documents(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """One entry per document (its first chunk's metadata), sorted by id, and the total."""

        def run(c: Collection) -> tuple[list[dict[str, Any]], int]:
            result = c.get(where={"chunk_index": 0}, include=["metadatas"])
            entries = sorted(
                (
                    {
                        "id": str(meta.get("doc_id", "")),
                        "title": str(meta.get("title", "")),
                        "chunks": int(meta.get("chunk_count", 0)),  # type: ignore[arg-type]
                        "source": str(meta.get("source", "")),
                    }
                    for meta in result.get("metadatas") or []
                ),
                key=lambda entry: str(entry["id"]),
            )
            return entries[offset : offset + limit], len(entries)

        return self._call("list", run)

    # writes ------------------------------------------------------------------------------
    def upsert_document(
        self,
        doc_id: str,
        title: str,
        chunks: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        source: str,
    ) -> None:
        """Write a document's chunks, then drop chunks a previous, longer version left behind.

        One upsert call writes all new chunks (chroma applies a call's batch as a unit), so a
        failure leaves either the old version or the new one; a failed stale-chunk cleanup is
        repaired by retrying the same request.
        """
        if len(chunks) != len(embeddings) or not chunks:
            raise ValueError("a document needs at least one chunk and one embedding per chunk")
        count = len(chunks)

        def run(c: Collection) -> None:
            c.upsert(
                ids=[chunk_id(doc_id, index) for index in range(count)],
                embeddings=[list(vector) for vector in embeddings],  # type: ignore[arg-type]
                documents=list(chunks),
                metadatas=[
                    {
                        "doc_id": doc_id,
                        "title": title,
                        "chunk_index": index,
                        "chunk_count": count,
                        "source": source,
                    }
                    for index in range(count)
                ],
            )
            stale: Any = {"$and": [{"doc_id": doc_id}, {"chunk_index": {"$gte": count}}]}
            c.delete(where=stale)

        self._call("upsert", run)

    def upsert_rows(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        documents: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
    ) -> None:
        """Write prepared rows in as few calls as the store allows (one, for our sizes)."""

        def run(c: Collection) -> None:
            client = self._client
            batch = client.get_max_batch_size() if client is not None else 1000
            for start in range(0, len(ids), batch):
                end = start + batch
                c.upsert(
                    ids=list(ids[start:end]),
                    embeddings=[list(v) for v in embeddings[start:end]],  # type: ignore[arg-type]
                    documents=list(documents[start:end]),
                    metadatas=list(metadatas[start:end]),
                )

        self._call("upsert", run)

    def delete_document(self, doc_id: str) -> bool:
        """True when the document existed and its chunks are gone."""

        def run(c: Collection) -> bool:
            existing = c.get(where={"doc_id": doc_id}, include=[])
            if not existing.get("ids"):
                return False
            c.delete(where={"doc_id": doc_id})
            return True

        return self._call("delete", run)
