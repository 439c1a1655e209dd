"""Micro-batches that start as soon as the worker's pipeline has room for one.

Faust's ``take_events(max, within)`` yields a batch when it is full or on a timer, and
while an actor works on its batch the next message that actor pulled waits for the whole
batch and then the next timer tick: under light load most latency was this waiting,
not work. Here one reader puts messages into a queue and a dispatcher starts a batch
the moment one of ``depth`` slots is free, with everything that has arrived (at most
``max_batch``). Under light load a clip goes in alone, at once; under heavy load the
queue fills while both slots are busy, so batches grow to ``max_batch`` by themselves.
``linger_s`` > 0 lets a slot that is free wait that long for companions first.

A batch's process may return a follow-up (an awaitable: the worker's publishing of the
batch's events and waiting for the broker's acknowledgement). Its slot is free again as
soon as the process returns, so the next batch goes into the stages while the broker
answers, instead of the stage process waiting out that round trip with nothing to do;
at most ``depth`` follow-ups run at once, so a broker that stalls holds the stages up
after ``depth`` more batches instead of letting events pile up.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("soundtag.worker")


class MicroBatcher(Generic[T]):
    def __init__(self, process: Callable[[list[T]], Awaitable[Awaitable[None] | None]], max_batch: int,
                 depth: int, linger_s: float = 0.0) -> None:
        if max_batch < 1 or depth < 1:
            raise ValueError("max_batch and depth must be at least 1")
        self.max_batch, self.depth, self.linger_s = max_batch, depth, linger_s
        self._process = process
        self._waiting: deque[T] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._slots = asyncio.Semaphore(depth)
        self._follow_up_slots = asyncio.Semaphore(depth)
        self._in_flight: set[asyncio.Future[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None  # what ended a batch unexpectedly

    async def put(self, item: T) -> None:
        """Queue one item; waits while ``max_batch`` items already wait (the broker keeps the rest)."""
        if self._dispatcher is None:
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        while len(self._waiting) >= self.max_batch:
            self._room.clear()
            await self._room.wait()
        self._waiting.append(item)
        self._arrived.set()

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            if self.linger_s > 0:
                await self._linger()
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            self._room.set()
            task = asyncio.ensure_future(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    async def _run(self, batch: list[T]) -> None:
        follow_up = await self._process(batch)
        if follow_up is None:
            return
        try:
            await self._follow_up_slots.acquire()
        except asyncio.CancelledError:
            if inspect.iscoroutine(follow_up):
                follow_up.close()  # never started: no "never awaited" warning
            raise
        task = asyncio.ensure_future(follow_up)
        self._in_flight.add(task)
        task.add_done_callback(self._follow_up_finished)

    async def _linger(self) -> None:
        deadline = time.monotonic() + self.linger_s
        while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._slots.release()
        self._ended(task)

    def _follow_up_finished(self, task: asyncio.Future[None]) -> None:
        self._follow_up_slots.release()
        self._ended(task)

    def _ended(self, task: asyncio.Future[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and self.failure is None:
            self.failure = exc
            log.error("a batch ended with %s: %s", type(exc).__name__, exc, exc_info=exc)

    async def close(self) -> None:
        """Stop dispatching and cancel the batches in flight and their follow-ups (their items
        stay unfinished)."""
        tasks = [t for t in (self._dispatcher, *self._in_flight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
