"""The RAG API under test: FastAPI + uvicorn, chromadb, onnxruntime embeddings, Ollama.

Importing the package is cheap; the app is built by `rag_api.main.create_app`.
`rag_api.wait_until_ready(url)` / `rag_api.probe_ready(url)` wait on or probe /readyz.
"""

from rag_api.readiness import NotReadyInTime, probe_ready, wait_until_ready

__version__ = "0.1.0"
__all__ = ["NotReadyInTime", "__version__", "probe_ready", "wait_until_ready"]
