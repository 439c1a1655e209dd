"""The one stage runner: decode (+ log-mel) ‖ model ‖ store, on their own threads.

Bulk ingest, the Faust worker and the API all push batches of payloads through a
``StageRunner``. One batch at a time per stage, so while the model runs batch n the
decoders read batch n+1 (its clips in parallel, one thread per core) and the store
writes batch n-1, and nothing blocking ever runs on an event loop. Every payload comes
out as exactly one stored record, tagged or failed with its reason; the only thing that
escapes is ``DatabaseUnavailable``, when the database stayed away longer than the caller
is willing to wait (nothing of that batch is then stored, and the caller must not
acknowledge it).
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
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tagger.audio import DecodedAudio
from tagger.db import session_factory
from tagger.decode_processes import DecodeProcesses
from tagger.device import cpu_cores
from tagger.inference import Tagger
from tagger.pipeline import Decoded, Tagged, decode_payloads, finish_records, run_model
from tagger.records import ClipRecord, Payload, Status
from tagger.repository import save_clips

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
    sent to another process): ``soundtag ingest``'s processes and the worker's."""

    model_path: str
    database_url: str
    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    max_duration_s: float | None = None
    db_retry_s: float = 120.0
    model_threads: int = 0  # 0: the process's share of the cores
    export_cache: str | None = None  # where the model's ONNX export is kept between loads

    def open(self, device: str, threads: int | None) -> tuple[Tagger, sessionmaker[Session], DatabaseWaiter]:
        """This process's tagger (on ``device``, with ``threads`` unless the job sets its
        own), sessions and database waiter."""
        tagger = Tagger.load(self.model_path, device=device, batch_size=self.batch_size,
                             engine=self.engine,  # type: ignore[arg-type]
                             threads=self.model_threads or threads, export_cache=self.export_cache)
        sessions = session_factory(self.database_url)
        # What the imports and the loading made lives as long as the process: frozen, it is
        # out of the collector's sight, so a full collection walks only what batches leave
        # behind, not the hundreds of thousands of objects of torch and the rest (and in a
        # forked process does not copy every page they are on).
        gc.freeze()
        return tagger, sessions, DatabaseWaiter(self.db_retry_s)


class BatchRunner(Protocol):
    """What tags and stores a batch for the stream worker: every payload comes back as
    exactly one stored record; ``DatabaseUnavailable`` if the database stayed away."""

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]: ...


def tag_and_store(tagger: Tagger, sessions: sessionmaker[Session], payloads: list[Payload],
                  max_duration_s: float | None, waiter: DatabaseWaiter) -> list[ClipRecord]:
    """One batch through every stage in turn on this thread: what a process that has a
    core to itself runs (``soundtag ingest --processes``, the worker's stage processes).

    The whole batch is decoded first, then its log-mels (inside ``run_model``): on one
    thread that costs less than each clip's log-mel right after its decoding. One
    transaction stores all of the batch or none."""
    records = finish_records(run_model(tagger, decode_payloads(payloads, max_duration_s)))
    save_records(sessions, records, waiter)
    return records


class StageRunner:
    def __init__(self, tagger: Tagger, sessions: sessionmaker[Session], max_duration_s: float | None = None,
                 waiter: DatabaseWaiter | None = None, decode_processes: int = 0) -> None:
        """``decode_processes``: decode in that many processes instead of on this one's
        threads (``tagger.decode_processes``: for a process that owns a GPU)."""
        self.tagger, self.sessions, self.max_duration_s = tagger, sessions, max_duration_s
        self.waiter = waiter or DatabaseWaiter()
        self._decode_processes = DecodeProcesses(decode_processes) if decode_processes else None
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
            return self._decoder.submit(decode_payloads, payloads, self.max_duration_s,
                                        decode_elsewhere=self._decode_processes.map)
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
