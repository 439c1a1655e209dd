"""Decode → model → store for a batch of payloads, in the one process pool or, for a
process that owns a GPU, on stage threads of its own.

On the CPU every caller (``soundtag ingest``, the stream worker, the API's uploads) runs
whole batches in ``tagger.pool.ProcessPool``'s processes (``tag_and_store_task``,
``PooledStages``), each process on its share of the cores. On a GPU the network costs next
to nothing and one process owns the device: there ``StageRunner`` overlaps decode ‖ model
‖ store on threads of that process, with the decoding (and the log-mels) in the pool.

Every payload comes out as exactly one stored record, tagged or failed with its reason;
the only thing that escapes is ``DatabaseUnavailable``, when the database stayed away
longer than the caller is willing to wait (nothing of that batch is then stored, and the
caller must not acknowledge it).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tagger.audio import DecodedAudio
from tagger.config import BATCH_SIZE
from tagger.db import session_factory
from tagger.device import cpu_cores
from tagger.inference import Tagger
from tagger.pipeline import Decoded, Tagged, decode_chunk, decode_payloads, died_decoding, finish_records, run_model
from tagger.records import ClipRecord, Payload, Status
from tagger.repository import save_clips

if TYPE_CHECKING:
    from tagger.pool import ProcessPool, Worker

log = logging.getLogger("soundtag.store")
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for longer than the retry budget."""


class DatabaseWaiter:
    """Runs database work, waiting out outages with backoff for at most ``give_up_after_s``.

    One line when the database goes away, one when it is back: not one per retry.
    """

    def __init__(self, give_up_after_s: float = 120.0, max_delay_s: float = 5.0) -> None:
        self.give_up_after_s, self.max_delay_s = give_up_after_s, max_delay_s
        self._lock = threading.Lock()
        self._down_since: float | None = None

    def run(self, operation: Callable[[], T], what: str) -> T:
        delay, started = 0.25, time.monotonic()
        while True:
            try:
                result = operation()
            except DBAPIError as exc:
                if not isinstance(exc, OperationalError) and not exc.connection_invalidated:
                    raise
                waited = time.monotonic() - started
                if waited >= self.give_up_after_s:
                    raise DatabaseUnavailable(
                        f"database unreachable for {waited:.0f} s while {what}: {_first_line(exc)}") from None
                self._went_down(exc, what)
                time.sleep(min(delay, max(0.0, self.give_up_after_s - waited)))
                delay = min(delay * 2, self.max_delay_s)
                continue
            self._came_back()
            return result

    def _went_down(self, exc: Exception, what: str) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("database unavailable while %s (%s); waiting up to %.0f s for it",
                            what, _first_line(exc), self.give_up_after_s)

    def _came_back(self) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning("database is back after %.1f s", time.monotonic() - self._down_since)
                self._down_since = None


def _first_line(exc: Exception) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def save_records(sessions: sessionmaker[Session], records: list[ClipRecord], waiter: DatabaseWaiter) -> None:
    """Store a batch in one transaction; a record the database refuses fails alone."""

    def write(batch: list[ClipRecord]) -> None:
        with sessions.begin() as session:
            save_clips(session, batch)

    try:
        waiter.run(lambda: write(records), f"storing {len(records)} clips")
        return
    except DatabaseUnavailable:
        raise
    except DBAPIError as exc:
        log.error("batch write refused (%s); storing clip by clip", _first_line(exc))
    for rec in records:
        try:
            waiter.run(functools.partial(write, [rec]), f"storing clip {rec.clip_id}")
        except DatabaseUnavailable:
            raise
        except DBAPIError as exc:
            rec.status, rec.error = Status.FAILED, f"database refused the result: {_first_line(exc)}"
            rec.top3, rec.features = [], None
            failed = ClipRecord(clip_id=rec.clip_id, source=rec.source[:2000], status=Status.FAILED, error=rec.error)
            waiter.run(functools.partial(write, [failed]), f"recording clip {rec.clip_id} as failed")


@dataclass(frozen=True)
class PipelineJob:
    """What a process needs to build its own pipeline (a tagger and sessions cannot be
    sent to another process): the pool's processes."""

    model_path: str
    database_url: str
    device: str = "auto"
    batch_size: int = BATCH_SIZE
    max_duration_s: float | None = None
    db_retry_s: float = 120.0
    export_cache: str | None = None  # where the model's ONNX export is kept between loads

    def open(self, device: str, threads: int | None) -> tuple[Tagger, sessionmaker[Session], DatabaseWaiter]:
        """This process's tagger (on ``device``, with ``threads``: None for the engine's
        default), sessions and database waiter."""
        tagger = Tagger.load(self.model_path, device=device, batch_size=self.batch_size, threads=threads,
                             export_cache=self.export_cache)
        sessions = session_factory(self.database_url)
        # What the imports and the loading made lives as long as the process: frozen, it is
        # out of the collector's sight, so a full collection walks only what batches leave
        # behind, not the hundreds of thousands of objects of torch and the rest (and in a
        # forked process does not copy every page they are on).
        gc.freeze()
        return tagger, sessions, DatabaseWaiter(self.db_retry_s)


class BatchRunner(Protocol):
    """What tags and stores a batch for the stream worker: every payload comes back as
    exactly one stored record; ``DatabaseUnavailable`` if the database stayed away.
    ``batches_at_once``: how many batches it works on at a time."""

    batches_at_once: int

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]: ...


def tag_and_store(tagger: Tagger, sessions: sessionmaker[Session], payloads: list[Payload],
                  max_duration_s: float | None, waiter: DatabaseWaiter) -> list[ClipRecord]:
    """One batch through every stage in turn on this thread: what a pool process runs.

    The whole batch is decoded first, then its log-mels (inside ``run_model``): on one
    thread that costs less than each clip's log-mel right after its decoding. One
    transaction stores all of the batch or none."""
    records = finish_records(run_model(tagger, decode_payloads(payloads, max_duration_s)))
    save_records(sessions, records, waiter)
    return records


def tag_and_store_task(worker: Worker, payloads: list[Payload]) -> list[ClipRecord]:
    """``tag_and_store`` in a pool process; the records come back without their encoded
    features (they are stored already)."""
    tagger, sessions, waiter = worker.pipeline()
    assert worker.job is not None
    records = tag_and_store(tagger, sessions, payloads, worker.job.max_duration_s, waiter)
    return [replace(r, features=None) for r in records]


def died_on(payload: Payload, how: str) -> Payload:
    """The payload as the failure it is, once its process died on it twice."""
    return Payload(data=b"", source=payload.source, clip_id=payload.clip_id, sha256=payload.sha256,
                   error=f"the tagging process died on this clip ({how}); nothing was tagged")


class PooledStages:
    """``run(payloads)`` for the stream worker and the API: each batch whole in one of the
    pool's processes, under the pool's crash policy; a clip its process died on twice is
    stored as failed, saying so."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool
        self.batches_at_once = pool.processes

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]:
        answers = await self.pool.arun(tag_and_store_task, payloads, self.record_failed)
        return [record for answer in answers for record in answer]

    def record_failed(self, payload: Payload, how: str) -> list[ClipRecord]:
        stored = self.pool.run(tag_and_store_task, [died_on(payload, how)], fail_loudly)
        return stored[0]

    def close(self, wait: bool = True) -> None:
        self.pool.close(wait)


def fail_loudly(payload: Payload, how: str) -> list[ClipRecord]:
    """The ``fail`` for storing a failure: that decodes nothing, so a process dying on it
    twice is the machine's fault, not the clip's."""
    raise RuntimeError(f"pool processes died storing the failure of {payload.source} ({how})")


class StageRunner:
    def __init__(self, tagger: Tagger, sessions: sessionmaker[Session], max_duration_s: float | None = None,
                 waiter: DatabaseWaiter | None = None, decode_processes: int = 0) -> None:
        """``decode_processes``: decode in a pool of that many processes instead of on this
        one's threads (for a process that owns a GPU: its CPU stages would otherwise be
        bound by Python's GIL to about one core)."""
        from tagger.pool import ProcessPool

        self.tagger, self.sessions, self.max_duration_s = tagger, sessions, max_duration_s
        self.batches_at_once = 2  # one in the model, the next decoding, the one before storing
        self.waiter = waiter or DatabaseWaiter()
        self._decode_processes = ProcessPool(decode_processes) if decode_processes else None
        # Each stage thread starts with its PyTorch thread count set (it is per thread, and
        # a new thread gets one per core): decode threads run side by side, each clip's
        # log-mel on one core; the model thread uses the tagger's count; the store's few
        # tensor operations need one. An extra OpenMP thread would only spin, taking CPU
        # from the other stages.
        # With decoding processes, two batches at a time: the next batch's clips are already
        # queued there when one batch's last clips come back, so no process waits on the parent.
        self._decoder = ThreadPoolExecutor(max_workers=2 if decode_processes else 1,
                                           thread_name_prefix="soundtag-decode",
                                           initializer=torch.set_num_threads, initargs=(1,))
        # Clips of a batch decode (and get their log-mel) in parallel on as many threads
        # as there are cores: libsndfile, FFmpeg and torch release the GIL, so this stage
        # takes up whatever CPU the model and the store leave idle.
        self._clip_decoders = ThreadPoolExecutor(max_workers=cpu_cores(), thread_name_prefix="soundtag-decode-clip",
                                                 initializer=torch.set_num_threads, initargs=(1,))
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-model",
                                         initializer=self._set_model_threads)
        self._storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-store",
                                          initializer=torch.set_num_threads, initargs=(1,))

    def _set_model_threads(self) -> None:  # read when the thread starts: wiring tests pass no tagger
        torch.set_num_threads(self.tagger.threads)

    # Each stage on its own thread; callers chain the futures to overlap batches.
    def decode(self, payloads: list[Payload]) -> Future[Decoded]:
        if self._decode_processes is not None:
            # The processes decode and compute the log-mels; this stage's thread only receives them.
            pool = self._decode_processes
            task = functools.partial(decode_chunk, max_duration_s=self.max_duration_s)
            return self._decoder.submit(decode_payloads, payloads, self.max_duration_s,
                                        decode_elsewhere=lambda ps: pool.map(task, ps, died_decoding))
        return self._decoder.submit(decode_payloads, payloads, self.max_duration_s, self.tagger.features,
                                    self._clip_decoders.map)

    def tag(self, decoded: Decoded) -> Future[Tagged]:
        return self._model.submit(run_model, self.tagger, decoded)

    def layer_maps(self, audio: DecodedAudio) -> Future[dict[str, Any]]:
        """Every layer's channel mean for one clip (the original ``/inference`` answer), on the model thread."""
        return self._model.submit(self.tagger.layer_maps, audio)

    def store(self, tagged: Tagged) -> Future[list[ClipRecord]]:
        return self._storer.submit(self._finish_and_save, tagged)

    def _finish_and_save(self, tagged: Tagged) -> list[ClipRecord]:
        records = finish_records(tagged)
        save_records(self.sessions, records, self.waiter)
        return records

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]:
        """One batch through all three stages without blocking the event loop."""
        decoded = await asyncio.wrap_future(self.decode(payloads))
        tagged = await asyncio.wrap_future(self.tag(decoded))
        return await asyncio.wrap_future(self.store(tagged))

    def close(self, wait: bool = True) -> None:
        for pool in (self._decoder, self._clip_decoders, self._model, self._storer):
            pool.shutdown(wait=wait, cancel_futures=True)
        if self._decode_processes is not None:
            self._decode_processes.close(wait)
