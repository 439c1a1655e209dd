"""`soundtag ingest`: the files' batches through the one process pool.

Each pool process takes the next batch whenever it is free (none waits on a slower one,
whatever the files' lengths; near the end the batches shrink, so that they finish
together) and runs it through hashing, the lookup of clips already tagged, decode, model,
encoding and store in turn on one thread (``tagger.ingest.ingest_batch_task``), with the
model on its share of the cores. Only paths go out and each batch's summary comes back.
Each batch commits in its own transaction, so a stop at any point keeps what was stored
and a re-run skips it.

The pool's crash policy holds here too: a process that dies is replaced and its batch is
run again file by file; a file its process dies on twice is stored as failed with the
reason, and the run goes on, so a re-run finishes as well.

On a GPU one process owns the device and tags; the pool's processes only decode for it
(``tagger.stages.StageRunner``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from tagger.device import processes_that_fit, resolve_device
from tagger.files import find_audio_files
from tagger.ingest import IngestSummary, died_on_file, ingest_batch_task, ingest_files
from tagger.pool import PoolClosed, PoolError, ProcessPool
from tagger.stages import DatabaseUnavailable, PipelineJob, fail_loudly, tag_and_store_task

FILES_PER_PROCESS = 64  # below this a second (forked) process's start-up, about 0.5 s, costs about what it saves
STOP_GRACE_S = 60.0  # after Ctrl-C, how long the processes get to finish the batch they store
MIN_TAIL_BATCH = 4  # the smallest batch handed out near the end


def auto_processes(files: int, device: str = "cpu", database_url: str = "postgresql://") -> int:
    """Processes for ``files`` files: one per FILES_PER_PROCESS, at most one per core and as
    many as the available memory holds; one on SQLite (one writer at a time). On a GPU these
    decode for the one process that owns it."""
    if not _concurrent_writers(database_url):
        return 1
    return max(1, min(processes_that_fit(gpu=resolve_device(device).type != "cpu"), files // FILES_PER_PROCESS))


def ingest_job(paths: Iterable[str | Path], job: PipelineJob, processes: int = 0,
               progress: bool = True, fork: bool = False) -> IngestSummary:
    """``soundtag ingest``: the files under ``paths`` in a pool of ``processes`` processes
    (0: ``auto_processes``). ``fork``: the caller runs no other thread and has done no
    torch work, so the pool's first processes may be forked (``tagger.pool``).

    The summary's seconds run from this call to the last commit: the file walk and the
    processes' start (importing torch, loading the model) count."""
    start = time.perf_counter()
    found = find_audio_files(paths)
    processes = processes or auto_processes(len(found.audio), job.device, job.database_url)
    if processes > 1 and not _concurrent_writers(job.database_url):
        raise ValueError("ingest runs in several processes on PostgreSQL only: SQLite takes one writer "
                         "at a time (leave --processes out)")
    if resolve_device(job.device).type != "cpu":
        summary = _ingest_on_gpu(found.audio, job, processes, progress)
    elif found.audio:
        summary = _ingest_in_pool(found.audio, job, min(processes, -(-len(found.audio) // MIN_TAIL_BATCH)), progress,
                                  fork)
    else:
        summary = IngestSummary()
    summary.not_audio = [str(p) for p in found.not_audio]
    summary.seconds = time.perf_counter() - start
    return summary


def _concurrent_writers(database_url: str) -> bool:
    return not database_url.startswith("sqlite")


def _ingest_on_gpu(files: list[Path], job: PipelineJob, decoders: int, progress: bool) -> IngestSummary:
    """This process tags on the GPU, stages overlapping; the pool decodes for it (with one
    process, its own threads decode)."""
    tagger, sessions, waiter = job.open(job.device, None)
    return ingest_files(files, tagger, sessions, batch_size=job.batch_size, max_duration_s=job.max_duration_s,
                        progress=progress, waiter=waiter, decode_processes=decoders if decoders > 1 else 0)


def _ingest_in_pool(files: list[Path], job: PipelineJob, processes: int, progress: bool,
                    fork: bool) -> IngestSummary:
    summary = IngestSummary(cpu_s=0.0)
    pool = ProcessPool(processes, job, fork=fork)
    bar = tqdm(total=len(files), unit="clip", desc="ingest", disable=not progress)
    lock = threading.Lock()
    stop = threading.Event()  # no more batches are handed out
    handed_out = 0

    def next_batch() -> list[Path] | None:
        nonlocal handed_out
        with lock:
            if stop.is_set() or handed_out >= len(files):
                return None
            size = tail_batch_size(len(files) - handed_out, processes, job.batch_size)
            batch = files[handed_out : handed_out + size]
            handed_out += size
            return batch

    def record_failed(path: Path, how: str) -> IngestSummary:
        stored = [r for answer in pool.run(tag_and_store_task, [died_on_file(path, how)], fail_loudly)
                  for r in answer]
        return IngestSummary(failed=len(stored), failures=[(r.source, r.error or "") for r in stored], cpu_s=0.0)

    def feed() -> None:
        # One thread per process: each hands its process the next batch once it is done.
        while (batch := next_batch()) is not None:
            try:
                parts = pool.run(ingest_batch_task, batch, record_failed)
            except PoolClosed:
                return  # stopped now (a second Ctrl-C): what was committed stays
            except (DatabaseUnavailable, PoolError, RuntimeError) as exc:
                with lock:
                    summary.gave_up = summary.gave_up or str(exc)
                stop.set()
                return
            with lock:
                for part in parts:
                    summary.add(part)
                bar.update(sum(p.tagged + p.skipped + p.failed for p in parts))
                bar.set_postfix(tagged=summary.tagged, skipped=summary.skipped, failed=summary.failed)

    feeders = [threading.Thread(target=feed, name=f"soundtag-ingest-{i}", daemon=True) for i in range(processes)]
    with _interrupts_counted() as interrupts:
        try:
            try:
                pool.wait_ready()
            except PoolError as exc:
                summary.gave_up = str(exc)
                return summary
            for t in feeders:
                t.start()
            stop_by: float | None = None
            while any(t.is_alive() for t in feeders):
                if interrupts and stop_by is None:
                    # No more batches are handed out; each process finishes the one it is on.
                    summary.interrupted, stop_by = True, time.monotonic() + STOP_GRACE_S
                    stop.set()
                if len(interrupts) > 1 or (stop_by is not None and time.monotonic() > stop_by):
                    break  # a second Ctrl-C, or the processes took too long: stop them now
                for t in feeders:
                    t.join(timeout=0.2)
        finally:
            pool.close(wait=not summary.interrupted)
            for t in feeders:
                if t.ident is not None:
                    t.join()
            bar.close()
    return summary


def tail_batch_size(remaining: int, processes: int, batch_size: int) -> int:
    """How many of the ``remaining`` files the next batch takes: ``batch_size`` until the
    end is near, then smaller batches (down to ``MIN_TAIL_BATCH``), so that the processes
    finish together instead of some waiting out another's last full batch."""
    return max(1, min(remaining, batch_size, max(MIN_TAIL_BATCH, -(-remaining // (2 * processes)))))


@contextlib.contextmanager
def _interrupts_counted() -> Iterator[list[float]]:
    """Ctrl-C is counted instead of raised, so the loop can wind the processes down and
    still report what they stored. Only the main thread can catch signals."""
    interrupts: list[float] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(time.monotonic()))
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
