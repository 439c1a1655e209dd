"""The one process pool: where ingest, the stream worker, GPU decoding and the API's uploads
run their per-clip work, so that a decoder crashing on a hostile file costs that clip, not
the command, the worker or the server.

Each process is a fresh interpreter (its callers run threads, CUDA, Faust or uvicorn, none
of which survive a fork) that loads what its job needs once, the model and database
sessions (or nothing, for decoding only), then runs the tasks it is sent one at a time,
on its share of the cores. Only a caller that vouches for it (``soundtag ingest``: one
thread, no torch work done yet) has its first processes forked, which saves each the
seconds of importing torch again; a replacement is always a fresh interpreter. A task is
a module-level function ``task(worker, items)``: it travels by name, its items and its
answer by pickle.

One crash policy for every caller:

- a process that dies (a decoder's crash, the OOM killer, a stray ``kill``) is replaced;
- the items it held are run again one by one;
- an item on which its process dies again goes to the caller's ``fail``, which records it
  as failed with the reason (and the stream dead-letters it); the run goes on;
- ``DEATHS_IN_A_ROW_TO_STOP`` items in a row that each end their process raise
  ``PoolError``: that is a broken install or machine, not hostile files.

A process whose parent is gone sees its pipe close and exits.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing as mp
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tagger.device import cpu_cores

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from tagger.inference import Tagger
    from tagger.stages import DatabaseWaiter, PipelineJob

log = logging.getLogger("soundtag.pool")
T = TypeVar("T")
R = TypeVar("R")
DEATHS_IN_A_ROW_TO_STOP = 3  # items in a row that each end their process: stop instead of failing them all
START_TIMEOUT_S = 300.0  # importing torch and loading (or exporting) the model, on a busy machine


class PoolError(RuntimeError):
    """A pool process could not start (or start again), or processes died on several items in a row."""


class PoolClosed(PoolError):
    """The pool was closed while the work was in it."""


class _ProcessDied(Exception):
    def __init__(self, i: int, how: str) -> None:
        super().__init__(f"pool process {i} died ({how})")
        self.how = how


@dataclass
class Worker:
    """What a pool process keeps between tasks: its job, and what the job opened."""

    job: PipelineJob | None
    threads: int
    _opened: tuple[Tagger, sessionmaker[Session], DatabaseWaiter] | None = field(default=None, repr=False)

    def pipeline(self) -> tuple[Tagger, sessionmaker[Session], DatabaseWaiter]:
        """This process's tagger (on the CPU), database sessions and database waiter."""
        if self._opened is None:
            if self.job is None:
                raise PoolError("this pool decodes only: it has no model")
            self._opened = self.job.open("cpu", self.threads)
        return self._opened


Task = Callable[[Worker, list[Any]], Any]


class ProcessPool:
    """``processes`` processes for ``job``'s work (``job=None``: no model, decoding only).

    ``run`` is safe to call from several threads at once: each call takes whichever process
    is free, waiting for one if none is."""

    def __init__(self, processes: int, job: PipelineJob | None = None, fork: bool = False) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        fork = fork and "fork" in mp.get_all_start_methods() and threading.active_count() == 1
        self.processes = processes
        self._job = job
        # A model's share of the cores; decoding only: one thread (each clip's log-mel on one core).
        self._threads_each = max(1, cpu_cores() // processes) if job else 1
        self._conns: list[Any] = [None] * processes
        self._procs: list[Any] = [None] * processes
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._deaths_in_a_row = 0
        self._failing = threading.local()  # set on a thread while it runs a ``fail``
        self._closed = False
        self._ready = [False] * processes
        self.version = ""
        if fork:
            gc.freeze()  # a forked process's collections then leave the pages it shares with this one alone
        for i in range(processes):
            self._start(i, "fork" if fork else "spawn")
            self._free.put(i)
        # The threads that wait on the processes for ``arun`` and ``map``: one per process.
        self._waiters = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="soundtag-pool")

    def _start(self, i: int, method: str = "spawn") -> None:
        ctx: Any = mp.get_context(method)
        ours, theirs = ctx.Pipe()
        # A forked process holds copies of this process's ends of every pipe: it closes them,
        # or no process would see its pipe close when this one closes it.
        inherited = [c for c in self._conns if c is not None] + [ours] if method == "fork" else []
        proc = ctx.Process(target=_serve, args=(self._job, self._threads_each, theirs, inherited),
                           name=f"soundtag-pool-{i}", daemon=True)
        proc.start()
        theirs.close()  # the process's end: closed here, so a dead process reads as EOF
        self._conns[i], self._procs[i], self._ready[i] = ours, proc, False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Block until every process has loaded what its job needs; the model's version
        ("" without a model). Raises ``PoolError`` with the process's own reason if one
        could not start."""
        versions = {self._wait_ready(i, timeout_s) for i in range(self.processes)}
        self.version = ", ".join(sorted(versions))
        return self.version

    def _wait_ready(self, i: int, timeout_s: float = START_TIMEOUT_S) -> str:
        if not self._conns[i].poll(timeout_s):
            raise PoolError(f"pool process {i} did not start within {timeout_s:.0f} s")
        try:
            kind, value = self._receive(i)
        except _ProcessDied as exc:  # not one that can be replaced: it never started
            raise PoolError(f"pool process {i} could not start: it died ({exc.how})") from None
        if kind != "ready":
            raise PoolError(f"pool process {i} could not start: {value}")
        self._ready[i] = True
        return cast(str, value)

    def run(self, task: Callable[[Worker, list[T]], R], items: list[T],
            fail: Callable[[T, str], R]) -> list[R]:
        """``task(items)`` in one process: ``[its answer]``; after a death, the answers of
        ``task([item])`` for each item in turn, with ``fail(item, why)`` for an item on
        which its process died again. Raises what the task raised (``DatabaseUnavailable``
        as it is; anything else as ``RuntimeError``) and ``PoolError``."""
        try:
            answer = self._call(task, items)
            self._no_death()
            return [answer]
        except _ProcessDied as exc:
            log.error("%s holding %d items; replaced it, running them one by one", exc, len(items))
        return [self._run_alone(task, item, fail) for item in items]

    def _run_alone(self, task: Callable[[Worker, list[T]], R], item: T, fail: Callable[[T, str], R]) -> R:
        try:
            answer = self._call(task, [item])
            self._no_death()
            return answer
        except _ProcessDied as exc:
            with self._lock:
                self._deaths_in_a_row += 1
                deaths = self._deaths_in_a_row
            if deaths >= DEATHS_IN_A_ROW_TO_STOP:
                # Items that each kill their process, one after the other: more likely a broken
                # install or machine than hostile files; failing every item would bury that.
                raise PoolError(f"pool processes died on {deaths} items in a row, each alone "
                                f"(the last: {exc.how}); the fault is not the items'") from None
            log.error("%s on one item alone; recording it as failed", exc)
            why = exc.how
        # What ``fail`` runs in the pool (storing the failure) is no item getting through:
        # it leaves the count of deaths in a row as it is.
        self._failing.active = True
        try:
            return fail(item, why)
        finally:
            self._failing.active = False

    def _no_death(self) -> None:
        if getattr(self._failing, "active", False):
            return
        with self._lock:
            self._deaths_in_a_row = 0

    async def arun(self, task: Callable[[Worker, list[T]], R], items: list[T],
                   fail: Callable[[T, str], R]) -> list[R]:
        """``run`` without blocking the event loop. A call whose caller is cancelled still
        finishes in its process, which is then free again."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._waiters, functools.partial(self.run, task, items, fail))

    def map(self, task: Callable[[Worker, list[T]], list[R]], items: list[T],
            fail: Callable[[T, str], list[R]]) -> list[R]:
        """``task`` over ``items`` spread across the processes (a task that answers each
        item with one result), the results in the items' order."""
        if not items:
            return []
        size = -(-len(items) // self.processes)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        futures = [self._waiters.submit(self.run, task, part, fail) for part in parts]
        return [result for future in futures for answer in future.result() for result in answer]

    def _call(self, task: Callable[[Worker, list[T]], R], items: list[T]) -> R:
        if self._closed:
            raise PoolClosed("the pool is closed")
        i = self._free.get()
        try:
            return self._call_in(i, task, items)
        finally:
            self._free.put(i)

    def _call_in(self, i: int, task: Callable[[Worker, list[T]], R], items: list[T]) -> R:
        try:
            if not self._ready[i]:
                self._wait_ready(i)
            try:
                self._conns[i].send((task, items))
            except (OSError, ValueError):
                raise _ProcessDied(i, self._exit(i)) from None
            kind, value = self._receive(i)
        except _ProcessDied:
            self._conns[i].close()
            if self._procs[i].is_alive():  # its pipe broke but it runs on: it cannot be told what to do
                self._procs[i].kill()
            if self._closed:
                raise PoolClosed("the pool was closed while it held this work") from None
            self._start(i)
            self._wait_ready(i)  # raises PoolError if it cannot start again
            raise
        if kind == "done":
            return cast(R, value)
        if kind == "raised":
            raise value
        raise RuntimeError(f"pool process {i} failed: {value}")  # the process itself serves on

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

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self, wait: bool = True) -> None:
        """Close the pipes (each process exits once done with its task); ``wait`` gives them
        10 s for that, otherwise they are killed at once (they ignore SIGINT and SIGTERM:
        work they had not finished was never acknowledged, and a transaction they had open
        rolls back)."""
        self._closed = True
        for conn in self._conns:
            conn.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)
        for proc in self._procs:
            proc.join(timeout=10.0 if wait else 0.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _serve(job: PipelineJob | None, threads: int, conn: Any, inherited: list[Any]) -> None:
    """A pool process's whole life: load, then run tasks until the pipe closes."""
    for other in inherited:
        other.close()
    # Ctrl-C in a terminal, or a service manager's SIGTERM, may reach the whole process
    # group: the parent decides when to stop, and this process ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import torch

        from tagger import db
        from tagger.stages import DatabaseUnavailable

        db.get_engine.cache_clear()  # a forked process opens connections of its own
        torch.set_num_threads(threads)
        worker = Worker(job, threads)
        version = worker.pipeline()[0].version if job is not None else ""
    except Exception as exc:  # broad on purpose: the parent reports it instead of waiting
        conn.send(("failed", f"{type(exc).__name__}: {exc}"[:2000]))
        return
    conn.send(("ready", version))
    while True:
        try:
            task, items = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or done
        try:
            answer: tuple[str, Any] = ("done", task(worker, items))
        except DatabaseUnavailable as exc:
            answer = ("raised", exc)
        except Exception as exc:  # broad on purpose: the task fails, the parent decides
            answer = ("failed", f"{type(exc).__name__}: {exc}"[:2000])
        try:
            conn.send(answer)
        except (OSError, ValueError):
            return
