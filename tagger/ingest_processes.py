"""Bulk ingest across processes: one whole pipeline per core.

In one process the stages run on their own threads so that they fill the cores, and the
handing over between threads and the waiting cost CPU of their own: on two cores about a
fifth of the machine (figures in deploy/benchmarks/README.md). Here each process takes
the next batch the parent hands out whenever it is free (none waits on a slower one,
whatever the files' lengths; near the end the batches shrink, so that they finish
together) and runs it through decode, model, encoding and store in turn on a single
thread, with one model thread; the other processes fill the other cores. Only each
batch's first and last index, progress counts and the summaries cross between
processes, so nothing is pickled per clip. Each process commits its own batches, so a
stop at any point keeps what was stored and a re-run skips it, exactly as in one process.

A process started by ``soundtag ingest`` is forked and only loads the model (a fraction of
a second); elsewhere each is a fresh interpreter that also imports torch (about two
seconds). ``auto_processes`` uses one per ``FILES_PER_PROCESS`` files, up to one per core
and per ``PROCESS_MEMORY`` of available memory, on PostgreSQL.

On a GPU, processes that each own it take turns on it and were slower than one, so there
one process tags and stores and the others only decode for it (``tagger.decode_processes``).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tagger.device import cpu_cores, processes_that_fit, resolve_device
from tagger.files import find_audio_files
from tagger.ingest import IngestSummary, ingest
from tagger.stages import PipelineJob

FILES_PER_PROCESS = 256  # below this a second process's start-up costs about what it saves
STOP_GRACE_S = 60.0  # after Ctrl-C, how long the processes get to finish the batch they store
POLL_S = 0.5  # how often the parent looks at Ctrl-C while nothing arrives
MIN_TAIL_BATCH = 4  # the smallest batch handed out near the end


def auto_processes(files: int, device: str = "cpu", database_url: str = "postgresql://") -> int:
    """Processes for ``files`` files: one per FILES_PER_PROCESS, at most one per core and as
    many as the available memory holds; one on SQLite (one writer at a time). On a GPU these
    are decoding processes feeding the one process that owns it (``tagger.decode_processes``)."""
    if not _concurrent_writers(database_url):
        return 1
    return max(1, min(processes_that_fit(gpu=resolve_device(device).type != "cpu"), files // FILES_PER_PROCESS))


def ingest_job(paths: Iterable[str | Path], job: PipelineJob, processes: int = 0, progress: bool = True,
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
    if processes > 1 and resolve_device(job.device).type != "cpu":
        # Processes that each own the GPU take turns on it and were slower than one, at any
        # count tried (deploy/benchmarks/README.md): there one process tags, the others
        # decode for it.
        summary = _ingest_with_own_pipeline(found.audio, job, job.device, None, progress=progress,
                                            decode_processes=processes)
        summary.not_audio = [str(p) for p in found.not_audio]
        summary.seconds = time.perf_counter() - start
        return summary
    if processes > 1 and not _concurrent_writers(job.database_url):
        raise ValueError("ingest runs in several processes on PostgreSQL only: SQLite takes one writer "
                         "at a time (leave --processes out)")
    files = found.audio
    batches = -(-len(files) // job.batch_size)
    if processes == 1 or batches <= 1:  # one batch or none: another process would only start
        summary = _ingest_here(files, found.not_audio, job, progress)
        summary.seconds = time.perf_counter() - start
        return summary
    summary = IngestSummary(not_audio=[str(p) for p in found.not_audio])
    count = min(processes, batches)
    threads = max(1, cpu_cores() // count)
    ctx: Any = mp.get_context(_start_method(fork))
    if ctx.get_start_method() == "fork":
        gc.freeze()  # a forked process's collections then leave the pages it shares with this one alone
    # One pipe per process: a process killed halfway through a message breaks only its own.
    pipes = [ctx.Pipe() for _ in range(count)]
    # One OpenMP thread per process: more only spin against the other processes.
    with _environment(OMP_NUM_THREADS=str(job.model_threads or threads)):
        workers = [ctx.Process(target=_run_part, args=(i, job, files, threads, pipes[i][1]),
                               name=f"soundtag-ingest-{i}", daemon=True) for i in range(count)]
        for w in workers:
            w.start()
    for _, theirs in pipes:
        theirs.close()  # the parent's copy: a process's end of the pipe closes when it exits
    conns: dict[Any, int] = {pipes[i][0]: i for i in range(count)}
    bar = tqdm(total=len(files), unit="clip", desc="ingest", disable=not progress)
    counts: dict[int, tuple[int, int, int]] = {}
    results: dict[int, IngestSummary] = {}
    handed_out = 0  # files handed out so far, in order
    stop_by: float | None = None
    with _interrupts_counted() as interrupts:
        try:
            while conns:
                if interrupts and stop_by is None:
                    # No more batches are handed out; each process finishes the one it is on.
                    summary.interrupted, stop_by = True, time.monotonic() + STOP_GRACE_S
                if len(interrupts) > 1 or (stop_by is not None and time.monotonic() > stop_by):
                    break  # a second Ctrl-C, or the processes took too long: stop them now
                ready: list[Any] = mp.connection.wait(list(conns), timeout=POLL_S)
                for conn in ready:
                    i = conns[conn]
                    try:
                        kind, payload = conn.recv()
                        if kind == "next":
                            # Batches go to whichever process is free: none waits on a slower one.
                            answer = None
                            if stop_by is None and handed_out < len(files):
                                size = tail_batch_size(len(files) - handed_out, count, job.batch_size)
                                answer = (handed_out, handed_out + size)
                                handed_out += size
                            conn.send(answer)
                            continue
                    except (EOFError, OSError, pickle.UnpicklingError):
                        del conns[conn]
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
    parts = [results.get(i) or _lost(i, None, counts.get(i), interrupted=True) for i in range(len(workers))]
    if all(part.cpu_s is not None for part in parts):  # a lost process's CPU is not known
        summary.cpu_s = sum(part.cpu_s or 0.0 for part in parts)
    for part in parts:
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


def _ingest_with_own_pipeline(files: list[Path], job: PipelineJob, device: str, threads: int | None, progress: bool,
                              overlap: bool = True, on_batch: Callable[[IngestSummary], None] | None = None,
                              batches: Callable[[list[Path], int], Iterator[list[Path]]] | None = None,
                              decode_processes: int = 0) -> IngestSummary:
    """``ingest`` with a tagger and sessions of this process's own, as the job describes."""
    tagger, sessions, waiter = job.open(device, threads)
    cpu_start = time.process_time()
    summary = ingest(files, tagger, sessions, batch_size=job.batch_size, max_duration_s=job.max_duration_s,
                     waiter=waiter, progress=progress, overlap=overlap, on_batch=on_batch, batches=batches,
                     decode_processes=decode_processes)
    if not decode_processes:  # their CPU is not this process's
        summary.cpu_s = time.process_time() - cpu_start
    return summary


def _ingest_here(files: list[Path], not_audio: list[Path], job: PipelineJob, progress: bool) -> IngestSummary:
    summary = _ingest_with_own_pipeline(files, job, job.device, None, progress=progress)
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


def tail_batch_size(remaining: int, processes: int, batch_size: int) -> int:
    """How many of the ``remaining`` files the next batch takes: ``batch_size`` until the
    end is near, then smaller batches (down to ``MIN_TAIL_BATCH``), so that the processes
    finish together instead of some waiting out another's last full batch."""
    return max(1, min(remaining, batch_size, max(MIN_TAIL_BATCH, -(-remaining // (2 * processes)))))


def _claimed_batches(conn: Any, files: list[Path]) -> Iterator[list[Path]]:
    """In a process: the batches the parent hands it, one at a time, until it says stop."""
    while True:
        conn.send(("next", None))
        span = conn.recv()
        if span is None:
            return
        yield files[span[0] : span[1]]


def _run_part(index: int, job: PipelineJob, files: list[Path], threads: int, conn: Any) -> None:
    """A process's whole life: its own tagger, sessions and pipeline, on the batches of
    ``files`` the parent hands it; progress and its summary go back through ``conn``."""
    parent = os.getppid()
    stop: list[int] = []
    # Ctrl-C in a terminal reaches every process: it takes effect between batches, so the
    # summary counts exactly what was committed.
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    try:
        import torch

        torch.set_num_threads(threads)  # a forked process keeps the parent's OpenMP settings

        def report(progress: IngestSummary) -> None:
            conn.send(("progress", (progress.tagged, progress.skipped, progress.failed)))
            if stop or os.getppid() != parent:  # asked to stop, or the parent is gone
                raise KeyboardInterrupt

        result = _ingest_with_own_pipeline(files, job, "cpu", threads, progress=False, overlap=False,
                                           on_batch=report,
                                           batches=lambda all_files, size: _claimed_batches(conn, all_files))
    except KeyboardInterrupt:
        result = IngestSummary(interrupted=True)
    except Exception as exc:  # broad on purpose: the parent reports it instead of waiting forever
        result = IngestSummary(gave_up=f"ingest process {index} failed: {type(exc).__name__}: {exc}"[:500])
    conn.send(("done", result))
    conn.close()


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
