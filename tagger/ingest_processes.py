"""Bulk ingest across processes: one whole pipeline per core, each on its share of the files.

In one process the stages run on their own threads so that they fill the cores, and the
handing over between threads and the waiting cost CPU of their own: on two cores about a
fifth of the machine (figures in deploy/benchmarks/README.md). Here each process takes
every N-th batch and runs it through decode, model, encoding and store in turn on a single
thread, with one model thread; the other processes fill the other cores. Nothing but
progress counts and the summaries crosses between processes, so nothing is pickled per
clip. Each process commits its own batches, so a stop at any point keeps what was stored
and a re-run skips it, exactly as in one process.

A process started by ``soundtag ingest`` is forked and only loads the model (a fraction of
a second); elsewhere each is a fresh interpreter that also imports torch (about two
seconds). ``auto_processes`` uses one per ``FILES_PER_PROCESS`` files, up to one per core,
on PostgreSQL and CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tagger.device import cpu_cores, resolve_device
from tagger.files import find_audio_files
from tagger.ingest import IngestSummary, ingest

FILES_PER_PROCESS = 256  # below this a second process's start-up costs about what it saves
STOP_GRACE_S = 60.0  # after Ctrl-C, how long the processes get to finish the batch they store
POLL_S = 0.5  # how often the parent looks at Ctrl-C while nothing arrives


@dataclass(frozen=True)
class IngestJob:
    """What a process needs to build its own pipeline (a tagger and sessions cannot be
    sent to another process)."""

    model_path: str
    database_url: str
    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    max_duration_s: float | None = None
    db_retry_s: float = 120.0
    model_threads: int = 0  # 0: the process's share of the cores


def auto_processes(files: int, device: str = "cpu", database_url: str = "postgresql://") -> int:
    """Processes for ``files`` files: one per FILES_PER_PROCESS, at most one per core. One on a
    GPU (the pipeline there is bound by the device, which one process keeps busy) and on
    SQLite (one writer at a time)."""
    if resolve_device(device).type != "cpu" or not _concurrent_writers(database_url):
        return 1
    return max(1, min(cpu_cores(), files // FILES_PER_PROCESS))


def ingest_job(paths: Iterable[str | Path], job: IngestJob, processes: int = 0, progress: bool = True,
               fork: bool = False) -> IngestSummary:
    """``soundtag ingest``: in this process, or in ``processes`` processes (0: ``auto_processes``).

    ``fork`` starts the processes by forking this one, which is only safe from a process
    that runs no other thread and has not used torch's OpenMP pool (GNU OpenMP does not
    survive a fork): the ``soundtag`` command. Otherwise each is a fresh interpreter.

    The summary's seconds run from this call to the last commit: the file walk and the model
    loading (here or in every process) count, whichever way it runs."""
    start = time.perf_counter()
    found = find_audio_files(paths)
    processes = processes or auto_processes(len(found.audio), job.device, job.database_url)
    if processes == 1:
        summary = _ingest_here(found.audio, found.not_audio, job, progress)
        summary.seconds = time.perf_counter() - start
        return summary
    if resolve_device(job.device).type != "cpu":
        raise ValueError("ingest runs in several processes on CPU only (set SOUNDTAG_DEVICE=cpu or "
                         "leave --processes out)")
    if not _concurrent_writers(job.database_url):
        raise ValueError("ingest runs in several processes on PostgreSQL only: SQLite takes one writer "
                         "at a time (leave --processes out)")
    summary = IngestSummary(not_audio=[str(p) for p in found.not_audio])
    shards = [s for s in _shards(found.audio, job.batch_size, max(1, processes)) if s]
    threads = max(1, cpu_cores() // max(1, len(shards)))
    ctx: Any = mp.get_context(_start_method(fork))
    # One pipe per process: a process killed halfway through a message breaks only its own.
    pipes = [ctx.Pipe(duplex=False) for _ in shards]
    # One OpenMP thread per process: more only spin against the other processes.
    with _environment(OMP_NUM_THREADS=str(job.model_threads or threads)):
        workers = [ctx.Process(target=_run_shard, args=(i, job, shard, threads, pipes[i][1]),
                               name=f"soundtag-ingest-{i}", daemon=True) for i, shard in enumerate(shards)]
        for w in workers:
            w.start()
    for _, sender in pipes:
        sender.close()  # the parent's copy: a process's end of the pipe closes when it exits
    readers: dict[Any, int] = {pipes[i][0]: i for i in range(len(workers))}
    bar = tqdm(total=len(found.audio), unit="clip", desc="ingest", disable=not progress)
    counts: dict[int, tuple[int, int, int]] = {}
    results: dict[int, IngestSummary] = {}
    stop_by: float | None = None
    with _interrupts_counted() as interrupts:
        try:
            while readers:
                if interrupts and stop_by is None:
                    # Ctrl-C in a terminal reaches every process; a signal sent to this one
                    # alone is passed on. Each stops after the batch it is working on.
                    summary.interrupted, stop_by = True, time.monotonic() + STOP_GRACE_S
                    _signal(workers, signal.SIGINT)
                if len(interrupts) > 1 or (stop_by is not None and time.monotonic() > stop_by):
                    break  # a second Ctrl-C, or the processes took too long: stop them now
                ready: list[Any] = mp.connection.wait(list(readers), timeout=POLL_S)
                for reader in ready:
                    i = readers[reader]
                    try:
                        kind, payload = reader.recv()
                    except (EOFError, OSError, pickle.UnpicklingError):
                        del readers[reader]
                        workers[i].join(timeout=5)
                        results.setdefault(i, _lost(i, workers[i].exitcode, counts.get(i)))
                        continue
                    if kind == "progress":
                        counts[i] = payload
                        tagged, skipped, failed = (sum(c[k] for c in counts.values()) for k in range(3))
                        bar.update(tagged + skipped + failed - bar.n)
                        bar.set_postfix(tagged=tagged, skipped=skipped, failed=failed)
                    else:
                        results[i] = payload
        finally:
            for w in workers:
                w.join(timeout=5)
                if w.is_alive():
                    w.terminate()  # its open transaction rolls back; committed batches stay
                    w.join()
            bar.close()
    for i in range(len(workers)):
        part = results.get(i) or _lost(i, None, counts.get(i), interrupted=True)
        summary.tagged += part.tagged
        summary.skipped += part.skipped
        summary.failed += part.failed
        summary.failures.extend(part.failures)
        summary.interrupted = summary.interrupted or part.interrupted
        summary.gave_up = summary.gave_up or part.gave_up
    summary.seconds = time.perf_counter() - start
    return summary


def _concurrent_writers(database_url: str) -> bool:
    return not database_url.startswith("sqlite")


def _start_method(fork: bool) -> str:
    """A forked process starts in a fraction of a second instead of importing torch again
    (about two seconds); it is only used where the caller vouches for it and no other
    thread runs."""
    if fork and "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _ingest_here(files: list[Path], not_audio: list[Path], job: IngestJob, progress: bool) -> IngestSummary:
    from tagger.db import session_factory
    from tagger.inference import Tagger
    from tagger.stages import DatabaseWaiter

    tagger = Tagger.load(job.model_path, device=job.device, batch_size=job.batch_size,
                         engine=job.engine, threads=job.model_threads or None)  # type: ignore[arg-type]
    summary = ingest(files, tagger, session_factory(job.database_url), batch_size=job.batch_size,
                     max_duration_s=job.max_duration_s, progress=progress, waiter=DatabaseWaiter(job.db_retry_s))
    summary.not_audio = [str(p) for p in not_audio]
    return summary


def _lost(index: int, exitcode: int | None, counts: tuple[int, int, int] | None,
          interrupted: bool = False) -> IngestSummary:
    """A process that never sent its summary: what its last progress report said."""
    tagged, skipped, failed = counts or (0, 0, 0)
    if interrupted:
        return IngestSummary(tagged=tagged, skipped=skipped, failed=failed, interrupted=True)
    return IngestSummary(tagged=tagged, skipped=skipped, failed=failed,
                         gave_up=f"ingest process {index} exited with code {exitcode} before it finished")


def _shards(files: list[Path], batch_size: int, processes: int) -> list[list[Path]]:
    """Every ``processes``-th batch to each process: all of them progress through the list
    together, so an interrupted run has tagged a prefix of every shard."""
    shards: list[list[Path]] = [[] for _ in range(processes)]
    for k, i in enumerate(range(0, len(files), batch_size)):
        shards[k % processes].extend(files[i : i + batch_size])
    return shards


def _run_shard(index: int, job: IngestJob, files: list[Path], threads: int, events: Any) -> None:
    """A process's whole life: its own tagger, sessions and pipeline; progress and its
    summary go back through ``events`` (its end of a pipe)."""
    parent = os.getppid()
    stop: list[int] = []
    # A stop (Ctrl-C reaches every process; the parent also passes it on) takes effect
    # between batches, so the summary counts exactly what was committed.
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    try:
        import torch

        torch.set_num_threads(threads)  # a forked process keeps the parent's OpenMP settings
        from tagger.db import session_factory
        from tagger.inference import Tagger
        from tagger.stages import DatabaseWaiter

        tagger = Tagger.load(job.model_path, device="cpu", batch_size=job.batch_size,
                             engine=job.engine, threads=job.model_threads or threads)  # type: ignore[arg-type]

        def report(progress: IngestSummary) -> None:
            events.send(("progress", (progress.tagged, progress.skipped, progress.failed)))
            if stop or os.getppid() != parent:  # asked to stop, or the parent is gone
                raise KeyboardInterrupt

        result = ingest(files, tagger, session_factory(job.database_url), batch_size=job.batch_size,
                        max_duration_s=job.max_duration_s, progress=False, waiter=DatabaseWaiter(job.db_retry_s),
                        overlap=False, on_batch=report)
    except KeyboardInterrupt:
        result = IngestSummary(interrupted=True)
    except Exception as exc:  # broad on purpose: the parent reports it instead of waiting forever
        result = IngestSummary(gave_up=f"ingest process {index} failed: {type(exc).__name__}: {exc}"[:500])
    events.send(("done", result))
    events.close()


@contextlib.contextmanager
def _interrupts_counted() -> Iterator[list[float]]:
    """In the parent: Ctrl-C is counted instead of raised, so the loop can wind the processes
    down and still report what they stored. Only the main thread can catch signals."""
    interrupts: list[float] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(time.monotonic()))
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)


def _signal(workers: list[Any], signum: int) -> None:
    for w in workers:
        if w.is_alive() and w.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signum)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables for the processes started inside (they copy it at start)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
