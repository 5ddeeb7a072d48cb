"""Micro-batching of retrieval: questions that arrive together are embedded and looked up together.

Questions that arrive while a batch is in work wait and go through the next one: one ONNX run
of 8 short questions costs about half of 8 single runs, and one chroma query with 8 vectors
costs little more than one with a single vector (most of a query's cost is fixed per call).
A batch also takes one trip to the threadpool instead of two per question; thread hand-offs
and GIL contention were a third of the process's CPU before this.

Every question is still embedded and looked up; nothing is cached. Padding to the longest
question in a batch does not change any question's vector, and questions asking for different
`top_k` are looked up in separate calls, so each gets exactly what a lone query would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
# (questions, top_k) -> one result per question, in order; runs in a worker thread
RetrieveBatch = Callable[[Sequence[str], int], Sequence[T]]


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class RetrievalBatcher(Generic[T]):
    def __init__(
        self,
        retrieve: RetrieveBatch[T],
        max_batch: int = 16,
        workers: int = 2,
        batch_sizes: Observer | None = None,
    ) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        self._retrieve = retrieve
        self._batch_sizes = batch_sizes
        self._max_batch = max_batch
        self._worker_count = workers
        self._queue: asyncio.Queue[tuple[str, int, asyncio.Future[T]]] | None = None
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the workers on the running event loop (the app's lifespan)."""
        self._queue = asyncio.Queue()
        self._workers = [
            asyncio.create_task(self._work(), name=f"retrieval-batcher-{n}")
            for n in range(self._worker_count)
        ]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._queue = None

    async def retrieve(self, question: str, top_k: int) -> T:
        if self._queue is None:  # not started (e.g. app used without lifespan): no batching
            results = await run_in_threadpool(self._retrieve, [question], top_k)
            return results[0]
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((question, top_k, future))
        return await future

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            pending = [item for item in batch if not item[2].cancelled()]
            if pending:
                await self._run(pending)

    async def _run(self, pending: list[tuple[str, int, asyncio.Future[T]]]) -> None:
        if self._batch_sizes is not None:
            self._batch_sizes.observe(len(pending))
        by_k: dict[int, list[tuple[str, asyncio.Future[T]]]] = {}
        for question, top_k, future in pending:
            by_k.setdefault(top_k, []).append((question, future))

        def run_all() -> list[tuple[list[asyncio.Future[T]], Sequence[T] | BaseException]]:
            outcomes: list[tuple[list[asyncio.Future[T]], Sequence[T] | BaseException]] = []
            for top_k, group in by_k.items():
                futures = [future for _, future in group]
                try:
                    outcomes.append((futures, self._retrieve([q for q, _ in group], top_k)))
                except Exception as error:  # every waiting request gets the error
                    outcomes.append((futures, error))
            return outcomes

        try:
            outcomes = await run_in_threadpool(run_all)
        except asyncio.CancelledError:
            for _, _, future in pending:
                future.cancel()
            raise
        for futures, outcome in outcomes:
            for index, future in enumerate(futures):
                if future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome[index])
