"""Answers: Ollama when it is configured and healthy, an extractive answer otherwise.

A dead or hanging Ollama must never make /query hang or fail: a call has a timeout, fast
(connection) failures are retried a bounded number of times, slow ones are not, and a circuit
breaker stops calling after repeated failures until a cool-down has passed.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rag_api.chunking import split_sentences
from rag_api.metrics import ServiceMetrics
from rag_api.settings import Settings
from rag_api.store import Hit

log = logging.getLogger("rag_api.generation")

EXTRACTIVE_MODEL = "extractive"
NO_ANSWER = "I could not find anything about that in the knowledge base."
BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `reset_after_s` it lets one
    trial call through (half-open): success closes it, failure opens it for another cool-down.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._reset_after_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial call at a time may."""
        with self._lock:
            state = self._state_locked()
            if state == "closed":
                return True
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self, trip_now: bool = False) -> None:
        """Count a failure; `trip_now` opens at once (a timeout already cost a full wait)."""
        with self._lock:
            self._failures += 1
            was_trial = self._trial_in_flight
            self._trial_in_flight = False
            if trip_now or was_trial or self._failures >= self._threshold:
                self._opened_at = self._clock()


@dataclass(frozen=True)
class Answer:
    text: str
    model: str
    degraded: bool


# -- extractive answers --------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9][a-z0-9\-_.]*[a-z0-9]|[a-z0-9]")
_STOPWORDS = frozenset(
    # a word list reads better as prose than as 90 quoted strings
    """a an the and or but if of to in on at by for with from as is are was were be been being
    do does did what which who whom whose when where why how that this these those it its
    i you he she we they me my your our their can could should would will shall may might
    must not no yes there here about into over under than then so such too very just also
    any all some each more most other only own same s t don doesn isn aren""".split()  # noqa: SIM905
)
_MARKDOWN_NOISE = re.compile(r"^#+\s*|[*_`>]+")


def content_words(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(text.lower()):
        word = word.strip(".-_")
        if word and word not in _STOPWORDS:
            words.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return words


@functools.lru_cache(maxsize=4096)
def _passage_sentences(text: str, title: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """A passage's candidate sentences with their content words, in reading order.

    A pure function of the stored text, cached: the same passages come back for many
    questions, and splitting them was most of an extractive answer's cost.
    """
    sentences = []
    for line in text.split("\n"):
        line = _MARKDOWN_NOISE.sub("", line).strip()
        for sentence in split_sentences(line):
            if len(sentence) < 12 or sentence.lower() == title.lower():
                continue
            sentences.append((sentence, frozenset(content_words(sentence))))
    return tuple(sentences)


def extractive_answer(question: str, hits: Sequence[Hit], max_sentences: int = 3) -> str:
    """The sentences of the best passages that share the most words with the question."""
    if not hits:
        return NO_ANSWER
    question_words = content_words(question)
    scored: list[tuple[float, int, str]] = []
    order = 0
    for rank, hit in enumerate(hits[:3]):
        for sentence, words in _passage_sentences(hit.text, hit.title):
            overlap = len(question_words & words)
            if overlap:
                # passages further down the ranking need more overlap to win
                scored.append((overlap * hit.score - 0.05 * rank, -order, sentence))
            order += 1
    if not scored:
        first = split_sentences(_MARKDOWN_NOISE.sub("", hits[0].text.split("\n\n")[-1]))
        return first[0] if first else hits[0].text[:300]
    ranked = sorted(scored, reverse=True)
    # keep only sentences nearly as relevant as the best one: no filler after a good answer
    cutoff = ranked[0][0] * 0.6
    best = [item for item in ranked if item[0] >= cutoff][:max_sentences]
    chosen: list[str] = []
    for _, _, sentence in sorted(best, key=lambda item: -item[1]):  # back into reading order
        if sentence not in chosen:
            chosen.append(sentence)
    return " ".join(chosen)


# -- the LLM ---------------------------------------------------------------------------------
class LLMUnavailable(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def build_prompt(question: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    context = "\n\n".join(f"[{hit.title}]\n{hit.text}" for hit in hits)
    return [
        {
            "role": "system",
            "content": "Answer the question using only the context. Be brief and factual. "
            "If the context does not contain the answer, say so.",
        },
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
    ]


class Generator:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self._client: Any = None
        if settings.llm_enabled:
            import ollama

            self._client = ollama.Client(host=settings.ollama_host, timeout=settings.llm_timeout_s)

    @property
    def calls_llm(self) -> bool:
        return self._client is not None

    def answer(self, question: str, hits: Sequence[Hit]) -> Answer:
        if self._client is None:
            return self._fallback(question, hits, "disabled")
        if not hits:
            return Answer(NO_ANSWER, EXTRACTIVE_MODEL, degraded=False)
        if not self.breaker.allow():
            return self._fallback(question, hits, "breaker_open")
        try:
            text = self._ask_with_retries(question, hits)
        except LLMUnavailable as error:
            self.breaker.record_failure(trip_now=error.reason == "timeout")
            self._metrics.breaker_open.set(1 if self.breaker.state != "closed" else 0)
            log.warning("llm call failed; answering extractively", extra={"error": str(error)})
            return self._fallback(question, hits, "failed")
        self.breaker.record_success()
        self._metrics.breaker_open.set(0)
        return Answer(text, self._settings.ollama_model, degraded=False)

    def _fallback(self, question: str, hits: Sequence[Hit], reason: str) -> Answer:
        self._metrics.llm_fallbacks.labels(reason).inc()
        return Answer(extractive_answer(question, hits), EXTRACTIVE_MODEL, degraded=True)

    def _ask_with_retries(self, question: str, hits: Sequence[Hit]) -> str:
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            stop_after_delay,
            wait_exponential,
        )

        retrying = Retrying(
            # only fast failures are worth another try; a timeout already cost the budget
            retry=retry_if_exception(
                lambda e: isinstance(e, LLMUnavailable) and e.reason == "connection"
            ),
            stop=stop_after_attempt(self._settings.llm_retries)
            | stop_after_delay(self._settings.llm_timeout_s),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )
        return retrying(self._ask_once, question, hits)

    def _ask_once(self, question: str, hits: Sequence[Hit]) -> str:
        import httpx
        import ollama

        self._metrics.llm_calls.inc()
        try:
            response = self._client.chat(
                model=self._settings.ollama_model,
                messages=build_prompt(question, hits),
                options={"temperature": 0, "num_predict": self._settings.llm_max_tokens},
            )
            text = str(response["message"]["content"]).strip()
        except httpx.TimeoutException as error:
            self._metrics.llm_failures.labels("timeout").inc()
            raise LLMUnavailable("timeout", f"ollama timed out: {error!r}") from error
        except (httpx.TransportError, ConnectionError) as error:
            self._metrics.llm_failures.labels("connection").inc()
            raise LLMUnavailable("connection", f"ollama unreachable: {error!r}") from error
        except (ollama.ResponseError, KeyError, TypeError, ValueError) as error:
            self._metrics.llm_failures.labels("error").inc()
            raise LLMUnavailable("error", f"ollama error: {error!r}") from error
        if not text:
            self._metrics.llm_failures.labels("error").inc()
            raise LLMUnavailable("error", "ollama returned an empty answer")
        return text
