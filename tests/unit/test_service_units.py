"""Unit tests of the service's parts that need no server: chunking, embeddings, answers,
the circuit breaker and the settings' refusals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from rag_api.chunking import chunk_text, markdown_title, read_markdown_dir
from rag_api.generation import NO_ANSWER, CircuitBreaker, extractive_answer
from rag_api.settings import Settings, describe_settings_error
from rag_api.store import Hit

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# -- chunking --------------------------------------------------------------------------------
def test_chunks_respect_the_budget_and_keep_every_word() -> None:
    paragraphs = [f"Paragraph {n} says something specific about topic {n}." for n in range(40)]
    text = "# Title\n\n" + "\n\n".join(paragraphs)
    chunks = chunk_text(text, max_chars=200)
    assert len(chunks) > 5
    assert all(0 < len(chunk) <= 200 for chunk in chunks)
    assert " ".join(chunks).split() == text.split()


def test_a_run_on_paragraph_is_split_at_sentences_then_words() -> None:
    sentence = "Pods restart with back-off when their container keeps crashing. "
    long_word_run = "word " * 300
    chunks = chunk_text(sentence * 20 + long_word_run, max_chars=150)
    assert all(len(chunk) <= 150 for chunk in chunks)
    assert chunks[0].startswith("Pods restart")
    assert " ".join(chunks).split() == (sentence * 20 + long_word_run).split()


def test_blank_text_gives_no_chunks() -> None:
    assert chunk_text(" \n\n \t\n", max_chars=100) == []


def test_markdown_files_become_documents_with_stem_ids_and_heading_titles(tmp_path: Path) -> None:
    (tmp_path / "pod-basics.md").write_text("intro line\n\n# Pod basics\n\nA pod.", "utf-8")
    (tmp_path / "untitled.md").write_text("No heading here.", "utf-8")
    (tmp_path / "empty.md").write_text("   \n", "utf-8")
    (tmp_path / "notes.txt").write_text("# Not markdown", "utf-8")
    documents = read_markdown_dir(tmp_path)
    assert [(d.id, d.title) for d in documents] == [
        ("pod-basics", "Pod basics"),
        ("untitled", "untitled"),
    ]
    assert markdown_title("## Sub\n# Main ##\n", "x") == "Main"


# -- embeddings ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared (integer arithmetic) model, made here for real from the shipped file."""
    from rag_api.model_prep import prepare

    return prepare(tmp_path_factory.mktemp("model") / "prepared.onnx").path


@pytest.fixture(scope="module", params=["shipped", "prepared"])
def embedder(request: pytest.FixtureRequest, prepared_model: Path):  # type: ignore[no-untyped-def]
    from rag_api.embeddings import MiniLMEmbedder, shipped_model_path

    path = shipped_model_path() if request.param == "shipped" else prepared_model
    return MiniLMEmbedder(model_path=path, threads=1)


def test_batches_are_padded_to_their_longest_input_not_a_fixed_length(embedder) -> None:  # type: ignore[no-untyped-def]
    short = ["What is a pod?", "NodePort range"]
    batch, tokens = embedder.padded_shape(short)
    assert batch == 2
    assert tokens < 16, f"padded to {tokens} tokens: the fixed 128 of tokenizer.json leaked in"
    long_text = "word " * 400
    assert embedder.padded_shape([*short, long_text]) == (3, 256)  # truncated at 256
    vectors = embedder.embed([*short, long_text])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_text_embeds_the_same_alone_and_beside_a_longer_text(embedder) -> None:  # type: ignore[no-untyped-def]
    text = "A readiness probe removes a pod from the endpoints."
    longer = "A liveness probe restarts a container. " * 12
    alone = embedder.embed([text])[0]
    batched = embedder.embed([text, longer])[0]
    assert np.abs(alone - batched).max() < 1e-4


def test_similar_meanings_are_closer_than_unrelated_ones(embedder) -> None:  # type: ignore[no-untyped-def]
    question, related, unrelated = embedder.embed(
        [
            "How does Kubernetes decide a pod can receive traffic?",
            "A readiness probe decides whether a pod receives traffic from a Service.",
            "Bananas are rich in potassium and grow in tropical climates.",
        ]
    )
    assert float(question @ related) > float(question @ unrelated) + 0.2


def test_only_the_prepared_model_needs_a_run_per_text(prepared_model: Path) -> None:
    """Dynamic quantization picks its scale from the whole batch: the embedder notices at load
    and runs texts one by one, so a vector never depends on its neighbours."""
    from rag_api.embeddings import MiniLMEmbedder, shipped_model_path

    assert MiniLMEmbedder(model_path=shipped_model_path()).batch_invariant
    assert not MiniLMEmbedder(model_path=prepared_model).batch_invariant


def test_the_prepared_model_agrees_with_the_shipped_one_on_the_knowledge_base(
    prepared_model: Path,
) -> None:
    from rag_api.embeddings import MiniLMEmbedder, shipped_model_path

    knowledge = Path(__file__).resolve().parents[2] / "system" / "knowledge"
    texts = [document.text[:1500] for document in read_markdown_dir(knowledge)]
    shipped = MiniLMEmbedder(model_path=shipped_model_path()).embed(texts)
    prepared = MiniLMEmbedder(model_path=prepared_model).embed(texts)
    cosines = (shipped * prepared).sum(axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.99, cosines


def test_the_default_model_is_the_prepared_one_else_the_shipped_one_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rag_api import embeddings, model_prep

    prepared = tmp_path / model_prep.PREPARED_FILE_NAME
    monkeypatch.setattr(model_prep, "prepared_model_path", lambda: prepared)
    with caplog.at_level("WARNING", logger="rag_api.embeddings"):
        assert embeddings.default_model_path() == embeddings.shipped_model_path()
    assert "rag_api.model_prep" in caplog.text
    prepared.write_bytes(b"onnx")
    assert embeddings.default_model_path() == prepared


def test_model_prep_writes_nothing_when_the_result_disagrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_api import model_prep

    output = tmp_path / "out" / "prepared.onnx"
    monkeypatch.setattr(model_prep, "MIN_AGREEMENT", 1.01)  # no quantized model can agree so
    with pytest.raises(model_prep.PrepareFailed, match="disagrees"):
        model_prep.prepare(output)
    assert not output.exists()
    assert list(output.parent.iterdir()) == []  # no scratch files left behind either


def test_model_prep_names_a_missing_source_and_an_existing_output_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rag_api import model_prep

    with pytest.raises(model_prep.PrepareFailed, match="no model at"):
        model_prep.prepare(tmp_path / "out.onnx", source=tmp_path / "missing.onnx")
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"kept")
    assert model_prep.main(["--output", str(existing), "--if-missing"]) == 0
    assert existing.read_bytes() == b"kept"
    assert "already" in capsys.readouterr().out


def test_embedder_speaks_chromas_embedding_function_protocol(embedder) -> None:  # type: ignore[no-untyped-def]
    vectors = embedder(["one", "two"])
    assert len(vectors) == 2 and vectors[0].shape == (384,)
    assert embedder.name() == "rag_api_minilm_onnx"


# -- extractive answers ----------------------------------------------------------------------
def _hit(text: str, score: float = 0.8, title: str = "Doc") -> Hit:
    return Hit(doc_id="doc", title=title, text=text, score=score)


def test_extractive_answer_picks_the_sentences_that_match_the_question() -> None:
    hits = [
        _hit(
            "# NodePort Services\n\nA NodePort Service opens one port on every node. "
            "The default NodePort range is 30000-32767. Services have selectors.",
            title="NodePort Services",
        ),
        _hit("Pods are ephemeral. They get new UIDs.", score=0.3),
    ]
    answer = extractive_answer("What is the default NodePort range?", hits)
    assert "30000-32767" in answer
    assert "ephemeral" not in answer
    assert "# NodePort" not in answer


def test_extractive_answer_without_passages_says_so() -> None:
    assert extractive_answer("anything?", []) == NO_ANSWER


def test_extractive_answer_without_overlap_falls_back_to_the_best_passage() -> None:
    answer = extractive_answer("zzz qqq?", [_hit("Chroma stores vectors on disk.")])
    assert answer == "Chroma stores vectors on disk."


# -- circuit breaker -------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow()  # one trial call
    assert not breaker.allow()  # and only one at a time
    breaker.record_failure()  # the trial failed: open again for a full cool-down
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()


def test_a_timeout_trips_the_breaker_at_once() -> None:
    breaker = CircuitBreaker(failure_threshold=5, reset_after_s=10, clock=FakeClock())
    breaker.record_failure(trip_now=True)
    assert breaker.state == "open"


# -- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RAG_PORT", "70000", "RAG_PORT"),
        ("RAG_STORE", "sqlite", "RAG_STORE"),
        ("RAG_API_KEY", "short", "at least 16"),
        ("RAG_API_KEY", "changeme", "at least 16"),
        ("RAG_API_KEY", "a-long-enough-key-with\nnewline", "whitespace"),
        ("RAG_OLLAMA_HOST", "ollama:11434", "http(s) URL"),
        ("RAG_COLLECTION", "x", "RAG_COLLECTION"),
        ("RAG_LLM_TIMEOUT_S", "0", "RAG_LLM_TIMEOUT_S"),
        ("RAG_TOP_K_MAX", "0", "RAG_TOP_K_MAX"),
        ("RAG_EMBED_MODEL_PATH", "/nonexistent/model.onnx", "model_prep"),
    ],
)
def test_settings_refuse_invalid_or_unsafe_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_settings_error(caught.value)
    assert variable in message and expected in message, message


def test_settings_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert (settings.host, settings.port, settings.store) == ("0.0.0.0", 8000, "embedded")
    assert settings.chroma_path == Path("./data/chroma")
    assert (settings.chroma_host, settings.chroma_port) == ("chroma", 8000)
    assert settings.collection == "knowledge"
    assert settings.knowledge_dir.name == "knowledge"
    assert settings.knowledge_dir.parent == Path(__file__).resolve().parents[2] / "system"
    assert (settings.ollama_host, settings.ollama_model) == ("", "smollm2:135m")
    assert (settings.llm_timeout_s, settings.api_key, settings.shutdown_timeout_s) == (10, "", 20)
