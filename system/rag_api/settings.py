"""The service's one settings object, read from `RAG_*` environment variables.

Invalid or unsafe values are refused at start with a message that names the variable, so a
bad ConfigMap fails the pod loudly instead of serving with a surprising configuration.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The knowledge base shipped beside the package (`/app/knowledge` in the image).
DEFAULT_KNOWLEDGE_DIR = Path(__file__).resolve().parent.parent / "knowledge"

# Chroma's own rule for collection names, stated up front so a typo fails at start.
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
# Keys anyone could guess; a configured key exists to keep writes private.
_GUESSABLE_KEYS = {"changeme", "change-me", "secret", "password", "apikey", "api-key", "admin"}
MIN_API_KEY_CHARS = 16


class Settings(BaseSettings):
    """Every knob of the service. Environment variables are the field names, prefixed `RAG_`."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", frozen=True)

    # serving
    host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - a pod serves on all its addresses
    port: int = Field(default=8000, ge=1, le=65535)
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=600)
    # after SIGTERM, serve open keep-alive connections with `Connection: close` this long (or
    # until none is left) before closing them: clients reconnect instead of failing
    drain_s: float = Field(default=2.0, ge=0, le=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # who answered: echoed in the X-Served-By header (the pod's name via the downward API;
    # the host name when unset)
    pod_name: str = Field(default_factory=socket.gethostname, max_length=253)

    # vector store
    store: Literal["embedded", "http"] = "embedded"
    chroma_path: Path = Path("./data/chroma")
    chroma_host: str = Field(default="chroma", min_length=1)
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    collection: str = "knowledge"
    knowledge_dir: Path = DEFAULT_KNOWLEDGE_DIR

    # generation
    ollama_host: str = ""
    ollama_model: str = Field(default="smollm2:135m", min_length=1)
    llm_timeout_s: float = Field(default=10.0, gt=0, le=300)
    llm_retries: int = Field(
        default=2, ge=1, le=5
    )  # attempts per call, for fast (connection) failures
    llm_max_tokens: int = Field(default=256, ge=16, le=4096)
    breaker_failures: int = Field(
        default=3, ge=1, le=100
    )  # consecutive failures that open the breaker
    breaker_reset_s: float = Field(default=30.0, gt=0, le=3600)  # open -> half-open cool-down

    # security and input limits
    api_key: str = ""
    max_question_chars: int = Field(default=1000, ge=10, le=20_000)
    max_document_bytes: int = Field(default=1_000_000, ge=1_000, le=20_000_000)
    top_k_max: int = Field(default=10, ge=1, le=100)
    page_size_max: int = Field(default=200, ge=1, le=10_000)

    # retrieval
    chunk_chars: int = Field(default=800, ge=100, le=8_000)
    embed_threads: int = Field(default=1, ge=1, le=8)  # onnxruntime intra-op threads per call
    embed_workers: int = Field(default=2, ge=1, le=16)  # question batches embedded at once
    # an ONNX file of all-MiniLM-L6-v2; unset: the prepared model if present, else the shipped
    embed_model_path: Path | None = None

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not _COLLECTION_NAME.match(value):
            raise ValueError(
                "must be 3-63 characters of letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("embed_model_path", mode="before")
    @classmethod
    def _embed_model_file(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # unset: the prepared model, else the shipped one
        path = Path(str(value))
        if not path.is_file():
            raise ValueError(
                f"no ONNX model file at {path}; leave it unset for the default, or run "
                "`python -m rag_api.model_prep --output PATH` to make one"
            )
        return path

    @field_validator("ollama_host")
    @classmethod
    def _ollama_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"must be empty (off) or an http(s) URL like http://ollama:11434, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _api_key_is_safe(cls, value: str) -> str:
        if value == "":
            return value
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace (a stray newline from a Secret?)")
        if len(value) < MIN_API_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_API_KEY_CHARS} characters when set")
        if value.lower() in _GUESSABLE_KEYS:
            raise ValueError("is a guessable placeholder; set a random key")
        return value

    @field_validator("host", "chroma_host")
    @classmethod
    def _no_blank_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("must be a host name or IP address without spaces")
        return value

    @model_validator(mode="after")
    def _paths_usable(self) -> Settings:
        if self.store == "embedded" and self.chroma_path.exists() and not self.chroma_path.is_dir():
            raise ValueError(f"RAG_CHROMA_PATH={self.chroma_path} exists and is not a directory")
        if self.knowledge_dir.exists() and not self.knowledge_dir.is_dir():
            raise ValueError(f"RAG_KNOWLEDGE_DIR={self.knowledge_dir} is not a directory")
        return self

    @property
    def llm_enabled(self) -> bool:
        return bool(self.ollama_host)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: a document plus its JSON envelope and escaping."""
        return self.max_document_bytes * 2 + 16_384


def describe_settings_error(error: ValidationError) -> str:
    """One line per refused variable, named as it is set in the environment."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) if item["loc"] else ""
        variable = f"RAG_{field.upper()}" if field else "settings"
        lines.append(f"{variable}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
