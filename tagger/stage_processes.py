"""The stage runner's work in one process per core: what the stream worker runs on CPU.

``StageRunner`` overlaps the stages of consecutive batches on threads of one process, and
handing work between those threads, and waiting, costs CPU of its own (figures in
deploy/benchmarks/README.md). Here each batch goes whole to whichever of N processes is
free, which runs decode, model, encoding and store in turn on one thread, the model on its
share of the cores (``tag_and_store``, as ``soundtag ingest --processes`` does), and
answers with the batch's records, their encoded features left out: they are stored already.

The processes are fresh interpreters (the worker's own process runs Faust's threads, so
forking it is not safe), each with its own tagger and database sessions, started once.
A process that dies is replaced, and its batch is tagged again clip by clip, so a file
that crashes a decoder is recorded as failed instead of stopping the worker (``run``). A
process whose parent is gone sees its pipe close and exits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing as mp
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, cast

from tagger.decode_processes import DEATHS_IN_A_ROW_TO_STOP
from tagger.device import cpu_cores
from tagger.records import ClipRecord, Payload
from tagger.stages import DatabaseUnavailable, PipelineJob, tag_and_store

log = logging.getLogger("soundtag.worker")
START_TIMEOUT_S = 300.0  # importing torch and loading (or exporting) the model, on a busy machine


class StageProcessError(RuntimeError):
    """A stage process could not start (or start again after it died)."""


class _ProcessDied(StageProcessError):
    def __init__(self, i: int, how: str) -> None:
        super().__init__(f"stage process {i} died ({how})")
        self.how = how


class ProcessStageRunner:
    """``run(payloads)`` like ``StageRunner.run``, each batch in one of ``processes`` processes."""

    def __init__(self, job: PipelineJob, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self._job = job
        self._threads_each = job.model_threads or max(1, cpu_cores() // processes)  # its share of the cores
        self._conns: list[Any] = [None] * processes
        self._procs: list[Any] = [None] * processes
        for i in range(processes):
            self._start(i)
        self._threads = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="soundtag-stages")
        self._idle = set(range(processes))  # processes free for a batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._deaths_in_a_row = 0  # clips that each killed their process, with no clip tagged between
        self.version = ""

    def _start(self, i: int) -> None:
        ctx = mp.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(self._job, self._threads_each, theirs), name=f"soundtag-stages-{i}",
                           daemon=True)
        proc.start()
        theirs.close()  # the process's end: it closes in the parent, so a dead process reads as EOF
        self._conns[i], self._procs[i] = ours, proc

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Block until every process has loaded the model; its version. Raises
        ``StageProcessError`` with the process's own reason if one could not."""
        self.version = ", ".join(sorted({self._ready(i, timeout_s) for i in range(len(self._conns))}))
        return self.version

    def _ready(self, i: int, timeout_s: float = START_TIMEOUT_S) -> str:
        if not self._conns[i].poll(timeout_s):
            raise StageProcessError(f"stage process {i} did not load the model within {timeout_s:.0f} s")
        try:
            kind, value = self._receive(i)
        except _ProcessDied as exc:  # not one that can be replaced: it never started
            raise StageProcessError(f"stage process {i} could not start: it died ({exc.how})") from None
        if kind != "ready":
            raise StageProcessError(f"stage process {i} could not start: {value}")
        return cast(str, value)

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]:
        """One batch through every stage in whichever process is free, without blocking the loop.

        A process that dies holding the batch (a decoder crashing on a hostile file, the
        kernel's OOM killer, a stray ``kill``) is replaced and the batch is tagged again clip
        by clip (what it stored already is stored again: the upsert keeps one row); a clip on
        which its process dies again is recorded as failed, saying so. Raises
        ``DatabaseUnavailable`` as ``StageRunner`` does, and ``StageProcessError`` when a
        process cannot be replaced or ``DEATHS_IN_A_ROW_TO_STOP`` clips in a row each end
        theirs. A batch whose caller is cancelled still finishes in its process, which is
        then free again."""
        try:
            records = await self._run_in_one(payloads)
            self._deaths_in_a_row = 0
            return records
        except _ProcessDied as exc:
            log.error("%s holding a batch of %d; replaced it, tagging the batch clip by clip", exc, len(payloads))
        return [record for p in payloads for record in await self._run_alone(p)]

    async def _run_alone(self, payload: Payload) -> list[ClipRecord]:
        try:
            records = await self._run_in_one([payload])
            self._deaths_in_a_row = 0
            return records
        except _ProcessDied as exc:
            self._deaths_in_a_row += 1
            if self._deaths_in_a_row >= DEATHS_IN_A_ROW_TO_STOP:
                # Clips that each kill their process, one after the other: more likely a broken
                # install or machine than hostile files; failing every clip would bury that.
                raise StageProcessError(f"stage processes died on {self._deaths_in_a_row} clips in a row, "
                                        f"each alone (the last: {exc.how}); the fault is not the clips'") from None
            log.error("%s on clip %s alone; recording it as failed", exc, payload.clip_id or payload.source)
            why = f"the tagging process died on this clip ({exc.how}); nothing was tagged"
        return await self._run_in_one([Payload(data=b"", source=payload.source, clip_id=payload.clip_id,
                                               error=why, sha256=payload.sha256)])

    async def _run_in_one(self, payloads: list[Payload]) -> list[ClipRecord]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an asyncio queue belongs to one event loop
            self._loop, self._free = loop, asyncio.Queue()
            for i in sorted(self._idle):
                self._free.put_nowait(i)
        i = await self._free.get()
        self._idle.discard(i)
        future = self._threads.submit(self._call, i, payloads)
        future.add_done_callback(functools.partial(self._finished, i, loop))
        return await asyncio.wrap_future(future)

    def _finished(self, i: int, loop: asyncio.AbstractEventLoop, future: Future[list[ClipRecord]]) -> None:
        """On the thread that ran the batch: the process (or the one that replaced it) is free
        again, unless it could not be replaced."""
        failure = None if future.cancelled() else future.exception()
        if isinstance(failure, StageProcessError) and not isinstance(failure, _ProcessDied):
            return
        try:
            loop.call_soon_threadsafe(self._give_back, i, loop)
        except RuntimeError:  # that loop is closed: the next one rebuilds its queue from _idle
            self._idle.add(i)

    def _give_back(self, i: int, loop: asyncio.AbstractEventLoop) -> None:
        self._idle.add(i)
        if loop is self._loop:
            self._free.put_nowait(i)

    def _call(self, i: int, payloads: list[Payload]) -> list[ClipRecord]:
        try:
            try:
                self._conns[i].send(payloads)
            except (OSError, ValueError):
                raise _ProcessDied(i, self._exit(i)) from None
            kind, value = self._receive(i)
        except _ProcessDied:
            self._conns[i].close()
            if self._procs[i].is_alive():  # its pipe broke but it runs on: it cannot be told what to do
                self._procs[i].kill()
            self._start(i)
            self._ready(i)  # raises StageProcessError if it cannot start again
            raise
        if kind == "done":
            return cast(list[ClipRecord], value)
        if kind == "unavailable":
            raise DatabaseUnavailable(value)
        raise RuntimeError(f"stage process {i} failed on a batch: {value}")  # the process itself serves on

    def _receive(self, i: int) -> tuple[str, Any]:
        try:
            return cast(tuple[str, Any], self._conns[i].recv())
        except (EOFError, OSError):
            raise _ProcessDied(i, self._exit(i)) from None

    def _exit(self, i: int) -> str:
        self._procs[i].join(timeout=1.0)
        code = self._procs[i].exitcode
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def close(self, wait: bool = True) -> None:
        """Close the pipes (each process exits once done with its batch); ``wait`` gives them
        10 s for that, otherwise they are killed at once (they ignore SIGTERM; an unfinished
        batch was never acknowledged, and what it stored is stored again when it is re-read)."""
        for conn in self._conns:
            conn.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
        for proc in self._procs:
            proc.join(timeout=10.0 if wait else 0.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _serve(job: PipelineJob, threads: int, conn: Any) -> None:
    """A stage process's whole life: load, then tag and store batches until the pipe closes."""
    # Ctrl-C in a terminal, or a service manager's SIGTERM, may reach the whole process
    # group: the parent decides when to stop, and this process ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(threads)
        tagger, sessions, waiter = job.open("cpu", threads)
    except Exception as exc:  # broad on purpose: the parent reports it instead of waiting
        conn.send(("failed", f"{type(exc).__name__}: {exc}"[:2000]))
        return
    conn.send(("ready", tagger.version))
    while True:
        try:
            payloads = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or done
        try:
            records = tag_and_store(tagger, sessions, payloads, job.max_duration_s, waiter)
            answer: tuple[str, Any] = ("done", [replace(r, features=None) for r in records])
        except DatabaseUnavailable as exc:
            answer = ("unavailable", str(exc))
        except Exception as exc:  # broad on purpose: the batch fails, the parent decides
            answer = ("failed", f"{type(exc).__name__}: {exc}"[:2000])
        try:
            conn.send(answer)
        except (OSError, ValueError):
            return
