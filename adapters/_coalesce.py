"""Calls of one kind made at about the same time, answered by one statement: the batching across
runs of the SQL adapters (a step consumer's lookups of the runs of the events in hand, the
writes of the transitions that finish together, triggers and callbacks issued concurrently).

A :class:`Coalescer` never waits for more work to arrive. An idle one starts a batch at the
event loop's next turn, so the calls made in the same turn (the handlers a consumer starts
for the events it holds) share it; calls made while a batch is under way form the next one
(group commit), once one of the ``parallel`` batches allowed at a time has ended. Under load,
batches grow by themselves to what arrives during one round trip; alone, a call is sent at
once.

Each call gets its own answer: ``run`` returns one result or exception per item, and a
failure of the whole batch is the failure of each of its calls. A caller cancelled before
its batch starts is left out of it; once taken into a batch, its item is sent anyway (as with
any cancelled database call, the caller cannot know whether it happened).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ._fastsql import track

__all__ = ["Coalescer"]

In = TypeVar("In")
Out = TypeVar("Out")


class _Queue(Generic[In, Out]):
    __slots__ = ("items", "tasks")

    def __init__(self) -> None:
        self.items: list[tuple[In, asyncio.Future[Out]]] = []
        self.tasks: set[asyncio.Task[None]] = set()


class Coalescer(Generic[In, Out]):
    """Batches of up to ``limit`` items for ``run(items)``, which returns, in order, each
    item's result or the exception its call raises. Up to ``parallel`` batches are under way
    at a time per event loop (each on a connection of its own): a call that finds fewer
    starts one at once."""

    def __init__(
        self,
        run: Callable[[list[In]], Awaitable[Sequence[Out | BaseException]]],
        limit: int,
        parallel: int = 1,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a batch holds at least one item, not {limit}")
        if parallel < 1:
            raise ValueError(f"at least one batch at a time, not {parallel}")
        self.run = run
        self.limit = limit
        self.parallel = parallel
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[In, Out]] = (
            weakref.WeakKeyDictionary()
        )
        self._loop: asyncio.AbstractEventLoop | None = None  # the last one's queue, at hand
        self._queue: _Queue[In, Out] = _Queue()

    def submit(self, item: In) -> asyncio.Future[Out]:
        """The future of ``item``'s result, sent with the next batch."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:  # the usual case: one loop (a weak dictionary look-up is slow)
            queue = self._queue
        else:
            found = self._queues.get(loop)
            if found is None:
                found = self._queues[loop] = _Queue()
            queue = found
            self._loop, self._queue = loop, found
        fut: asyncio.Future[Out] = loop.create_future()
        queue.items.append((item, fut))
        if len(queue.tasks) < self.parallel and len(queue.items) == 1:
            task = loop.create_task(self._drain(queue))
            queue.tasks.add(task)
            track(task)
        return fut

    async def _drain(self, queue: _Queue[In, Out]) -> None:
        try:
            while queue.items:
                taken = queue.items[: self.limit]
                del queue.items[: self.limit]
                batch = [(item, fut) for item, fut in taken if not fut.done()]
                if not batch:
                    continue
                try:
                    results = await self.run([item for item, _ in batch])
                except Exception as err:  # the whole batch failed: so did each call
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                except BaseException:
                    for _, fut in batch:
                        fut.cancel()
                    raise
                for (_, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            queue.tasks.discard(asyncio.current_task())
            if not queue.tasks:  # only if this task was cancelled (the loop closes)
                for _, fut in queue.items:
                    fut.cancel()
                queue.items.clear()
