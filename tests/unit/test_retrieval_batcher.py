"""The retrieval batcher's own rules, with a recording retrieve function in place of the model.

The real model and store behind it are exercised through uvicorn in test_service_api.py
(test_concurrent_questions_get_exactly_what_lone_questions_get).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from rag_api.batching import RetrievalBatcher


class Recorder:
    """retrieve(questions, top_k) -> 'question@k' strings; records every call it gets."""

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple[tuple[str, ...], int]] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, questions: Sequence[str], top_k: int) -> list[str]:
        assert self.release.wait(5), "the test never released the retrieve call"
        self.calls.append((tuple(questions), top_k))
        if self.fail_on in questions:
            raise RuntimeError(f"store down while looking up {self.fail_on!r}")
        return [f"{question}@{top_k}" for question in questions]


class Sizes:
    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float) -> None:
        self.seen.append(amount)


async def _ask_while_busy(
    batcher: RetrievalBatcher[str], recorder: Recorder, asks: list[tuple[str, int]]
) -> list[object]:
    """Hold the only worker on a first question so the rest queue up and form one batch."""
    batcher.start()
    try:
        recorder.release.clear()
        first = asyncio.ensure_future(batcher.retrieve("first", 1))
        await asyncio.sleep(0.05)  # the worker has taken "first" and waits in retrieve
        rest = [asyncio.ensure_future(batcher.retrieve(q, k)) for q, k in asks]
        await asyncio.sleep(0.05)
        recorder.release.set()
        results = await asyncio.wait_for(
            asyncio.gather(first, *rest, return_exceptions=True), timeout=10
        )
        return list(results)[1:]
    finally:
        await batcher.stop()


def test_questions_queued_together_form_one_batch_split_by_top_k() -> None:
    recorder, sizes = Recorder(), Sizes()
    batcher = RetrievalBatcher(recorder, workers=1, batch_sizes=sizes)
    asks = [("a", 3), ("b", 1), ("c", 3), ("d", 3), ("e", 1)]
    results = asyncio.run(_ask_while_busy(batcher, recorder, asks))
    assert results == ["a@3", "b@1", "c@3", "d@3", "e@1"]
    assert recorder.calls == [(("first",), 1), (("a", "c", "d"), 3), (("b", "e"), 1)]
    assert sizes.seen == [1, 5]


def test_a_failed_lookup_fails_its_own_group_only_and_the_worker_lives_on() -> None:
    recorder = Recorder(fail_on="c")
    batcher = RetrievalBatcher(recorder, workers=1)
    results = asyncio.run(_ask_while_busy(batcher, recorder, [("a", 3), ("b", 1), ("c", 3)]))
    assert results[1] == "b@1"
    for failed in (results[0], results[2]):
        assert isinstance(failed, RuntimeError) and "store down" in str(failed)

    async def after() -> str:
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.retrieve("later", 2), timeout=5)
        finally:
            await batcher.stop()

    assert asyncio.run(after()) == "later@2"


def test_without_start_each_question_is_looked_up_alone() -> None:
    recorder = Recorder()
    batcher = RetrievalBatcher(recorder)
    assert asyncio.run(batcher.retrieve("solo", 4)) == "solo@4"
    assert recorder.calls == [(("solo",), 4)]


def test_a_client_that_went_away_is_not_looked_up() -> None:
    recorder = Recorder()
    batcher = RetrievalBatcher(recorder, workers=1)

    async def scenario() -> list[object]:
        batcher.start()
        try:
            recorder.release.clear()
            first = asyncio.ensure_future(batcher.retrieve("first", 1))
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(batcher.retrieve("gone", 1))
            kept = asyncio.ensure_future(batcher.retrieve("kept", 1))
            await asyncio.sleep(0.05)
            gone.cancel()
            recorder.release.set()
            return list(await asyncio.wait_for(asyncio.gather(first, kept), timeout=10))
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ["first@1", "kept@1"]
    assert recorder.calls == [(("first",), 1), (("kept",), 1)]


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"workers": 0}])
def test_nonsense_sizes_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetrievalBatcher(Recorder(), **bad)
