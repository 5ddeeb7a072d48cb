"""End-to-end and chaos harness for the RAG API on Kubernetes."""

__version__ = "0.1.0"
