"""The worker's micro-batcher: a batch starts as soon as a slot is free, with what has arrived."""

import asyncio

import pytest

from stream.batching import MicroBatcher


class Recorder:
    """A batch process that records each batch and finishes when told to."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release: dict[int, asyncio.Event] = {}

    async def __call__(self, batch: list[int]) -> None:
        done = self.release[len(self.batches)] = asyncio.Event()
        self.batches.append(batch)
        await done.wait()

    def finish(self, index: int) -> None:
        self.release[index].set()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_item_starts_a_batch_at_once():
    """Within a few turns of the event loop, not after a timer: no sleep happens here."""

    async def scenario():
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=32, depth=2)
        await batcher.put(1)
        await _settle()
        started = list(rec.batches)
        rec.finish(0)
        await batcher.close()
        return started

    assert asyncio.run(scenario()) == [[1]]


def test_items_that_arrive_while_the_slots_are_busy_go_together_into_the_next_batch():
    async def scenario():
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=4, depth=2)
        await batcher.put(1)
        await _settle()
        await batcher.put(2)
        await _settle()  # both slots busy now
        for item in (3, 4, 5, 6):
            await batcher.put(item)
        await _settle()
        busy = list(rec.batches)
        rec.finish(1)
        await _settle()
        after = list(rec.batches)
        for i in range(len(rec.batches)):
            rec.finish(i)
        await batcher.close()
        return busy, after

    busy, after = asyncio.run(scenario())
    assert busy == [[1], [2]]
    assert after == [[1], [2], [3, 4, 5, 6]]


def test_put_waits_while_max_batch_items_wait_and_batches_never_exceed_it():
    async def scenario():
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=3, depth=1)
        await batcher.put(0)
        await _settle()  # the only slot is busy
        for item in (1, 2, 3):
            await batcher.put(item)
        blocked = asyncio.ensure_future(batcher.put(4))
        await _settle()
        was_blocked = not blocked.done()
        rec.finish(0)
        await _settle()
        await asyncio.wait_for(blocked, 1)
        rec.finish(1)
        await _settle()
        rec.finish(2)
        await batcher.close()
        return was_blocked, rec.batches

    was_blocked, batches = asyncio.run(scenario())
    assert was_blocked
    assert batches == [[0], [1, 2, 3], [4]]


def test_linger_waits_for_companions_when_asked():
    async def scenario():
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=8, depth=1, linger_s=0.2)
        await batcher.put(1)
        await asyncio.sleep(0.05)  # the second arrives well within the linger
        await batcher.put(2)
        while not rec.batches:  # the batch starts once the linger is over
            await asyncio.sleep(0.01)
        batches = list(rec.batches)
        rec.finish(0)
        await batcher.close()
        return batches

    assert asyncio.run(scenario()) == [[1, 2]]


def test_a_failed_batch_frees_its_slot_and_is_reported():
    async def scenario():
        seen = []

        async def process(batch):
            seen.append(batch)
            if batch == [1]:
                raise RuntimeError("boom")

        batcher = MicroBatcher(process, max_batch=8, depth=1)
        await batcher.put(1)
        await _settle()
        await batcher.put(2)
        await _settle()
        await batcher.close()
        return seen, batcher.failure

    seen, failure = asyncio.run(scenario())
    assert seen == [[1], [2]]
    assert isinstance(failure, RuntimeError)


def test_close_cancels_the_batches_in_flight():
    async def scenario():
        cancelled = asyncio.Event()

        async def process(batch):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        batcher = MicroBatcher(process, max_batch=8, depth=2)
        await batcher.put(1)
        await _settle()
        await asyncio.wait_for(batcher.close(), 1)
        return cancelled.is_set()

    assert asyncio.run(scenario())


def test_sizes_below_one_are_refused():
    async def noop(batch):
        return None

    with pytest.raises(ValueError):
        MicroBatcher(noop, max_batch=0, depth=1)


def test_a_batch_frees_its_slot_when_its_process_returns_and_its_follow_up_runs_on():
    """The stages take the next batch while the previous one's follow-up (the events and the
    broker's acknowledgement) still waits; at most ``depth`` follow-ups wait at once."""

    async def scenario():
        acknowledged = asyncio.Event()
        started, followed = [], []

        async def follow_up(batch):
            await acknowledged.wait()
            followed.append(batch)

        async def process(batch):
            started.append(batch)
            return follow_up(batch)

        batcher = MicroBatcher(process, max_batch=8, depth=1)
        await batcher.put(1)
        await _settle()
        await batcher.put(2)  # the slot is free although batch [1] is not acknowledged
        await _settle()
        await batcher.put(3)  # batch [2] waits for a follow-up slot: [3] waits for the stage slot
        await _settle()
        before = (list(started), list(followed))
        acknowledged.set()
        await _settle()
        await _settle()
        after = (list(started), list(followed))
        await batcher.close()
        return before, after, batcher.failure

    before, after, failure = asyncio.run(scenario())
    assert before == ([[1], [2]], [])
    assert after == ([[1], [2], [3]], [[1], [2], [3]])
    assert failure is None


def test_a_failed_follow_up_is_reported_and_close_cancels_the_waiting_ones():
    async def scenario():
        cancelled = asyncio.Event()

        async def follow_up(batch):
            if batch == [1]:
                raise RuntimeError("refused")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def process(batch):
            return follow_up(batch)

        batcher = MicroBatcher(process, max_batch=8, depth=1)
        await batcher.put(1)
        await _settle()
        await batcher.put(2)
        await _settle()
        await asyncio.wait_for(batcher.close(), 1)
        return batcher.failure, cancelled.is_set()

    failure, cancelled = asyncio.run(scenario())
    assert isinstance(failure, RuntimeError)
    assert cancelled
