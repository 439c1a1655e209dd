"""Decoding in a pool of processes, for the one process that owns a GPU.

On a GPU the network costs next to nothing and one process is bound by its CPU stages,
which Python's GIL keeps on about one core however many decoding threads it runs
(deploy/benchmarks/README.md). Processes that each own the GPU took turns on it and were
slower still. So there the stage runner sends each batch's clips to a pool of decoding
processes, which also compute each clip's log-mel and waveform envelope on their own core
(``tagger.pipeline.decode_for_model``), and keeps the network, the encoding and the store
for itself. The processes are forked from a server process started fresh (the parent runs
CUDA and threads, which a fork of it would not survive).

Only payloads go out; log-mels, envelopes and lengths come back, not samples (a 5 s
clip's are 8× its log-mel, and receiving them was the largest piece of the one process's
own work, deploy/benchmarks/README.md). A decoding process that dies (a
decoder crashing on a hostile file, the OOM killer) breaks the pool: it is started again
and the batch decoded clip by clip, so the clip it dies on again is recorded as failed and
the others are decoded; several such clips in a row stop instead (a broken install, not a
bad file).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing.context import BaseContext
from typing import TypeVar

import torch

from tagger.records import Payload

log = logging.getLogger("soundtag.decode")
T = TypeVar("T")
DEATHS_IN_A_ROW_TO_STOP = 3  # clips in a row that each end their process: stop instead of failing them all
DIED = "the decoding process died on this clip; nothing was tagged"
CLOSED = "decoding stopped: the decoding processes were closed"


class DecodeProcessError(RuntimeError):
    """Decoding processes died on several clips in a row."""


def _start_decoder(parent: int) -> None:
    # Ctrl-C in a terminal reaches every process of the group; the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # each process computes its clips' log-mels on its own core
    threading.Thread(target=_exit_with, args=(parent,), name="soundtag-parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this process once the one it decodes for is gone, even by SIGKILL: it would
    otherwise wait for work forever (its parent is the forkserver, which outlives it too)."""
    try:
        watch = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): look once a second
        while _alive(parent):
            time.sleep(1.0)
        os._exit(0)
    select.select([watch], [], [])  # readable once the process has exited
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _context() -> BaseContext:
    """Processes forked from a fresh server process that has imported the decoder once (a
    fresh interpreter each would import torch again: seconds of CPU per process); where
    there is no forkserver, fresh interpreters."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tagger.pipeline"])
    return ctx


class DecodeProcesses:
    """``map(decode_one, payloads)`` in ``processes`` processes, surviving their deaths.

    Safe to call from several threads: batches share the pool, and after a death one batch
    at a time goes clip by clip in the pool started again."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.processes = processes
        self._pool = self._start()
        self._alone = threading.Lock()  # held while a batch goes clip by clip
        self._deaths_in_a_row = 0
        self._closed = False

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=_context(), initializer=_start_decoder,
                                   initargs=(os.getpid(),))

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._closed:  # shut down by ``close``: no pool is started again
            raise DecodeProcessError(CLOSED)
        self._pool = self._start()

    def map(self, decode_one: Callable[[Payload], T], payloads: list[Payload]) -> Iterable[T]:
        """``decode_one`` of every payload, in order. ``decode_one`` turns a payload whose
        ``error`` is set into its failed result without decoding it."""
        pool = self._pool
        chunk = max(1, len(payloads) // (4 * self.processes))  # about four pieces each: none waits long on another
        try:
            done = list(pool.map(decode_one, payloads, chunksize=chunk))
        except (BrokenProcessPool, CancelledError, RuntimeError):  # RuntimeError: shut down by another batch's restart
            if self._closed:
                raise DecodeProcessError(CLOSED) from None
            log.error("a decoding process died during a batch of %d clips; decoding them one by one", len(payloads))
            with self._alone:
                if self._pool is pool:  # not started again by another batch already
                    self._restart()
                return [self._one_alone(decode_one, p) for p in payloads]
        if payloads:
            self._deaths_in_a_row = 0
        return done

    def _one_alone(self, decode_one: Callable[[Payload], T], payload: Payload) -> T:
        try:
            result = self._pool.submit(decode_one, payload).result()
        except BrokenProcessPool:
            self._restart()
            self._deaths_in_a_row += 1
            log.error("a decoding process died on %s; recorded as failed", payload.source)
            if self._deaths_in_a_row >= DEATHS_IN_A_ROW_TO_STOP:
                raise DecodeProcessError(f"decoding processes died on {self._deaths_in_a_row} clips in a row; "
                                         "stopping rather than failing every clip") from None
            return decode_one(replace(payload, error=DIED))
        self._deaths_in_a_row = 0
        return result

    def close(self, wait: bool = True) -> None:
        """Stop the processes; a batch still decoding raises ``DecodeProcessError``."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
