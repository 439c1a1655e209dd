"""`soundtag worker`: load the model and the database, then run the Faust worker.

Two things an operator needs that Faust does not give: a stop that takes seconds even
when the broker is gone (nothing unacknowledged is ever committed, so ending the process
after a short grace loses nothing), and one log line per broker state change instead
of one per retry.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from faust import Worker

from tagger.config import Settings, get_settings
from tagger.device import processes_that_fit, resolve_device
from tagger.pool import PoolError, ProcessPool
from tagger.stages import BatchRunner, DatabaseWaiter, PooledStages, StageRunner
from tagger.startup import check_model, load_tagger, open_database, pipeline_job

STOP_GRACE_S = 8.0
log = logging.getLogger("soundtag.worker")


class _StopWithinSeconds(Worker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Faust's terminal spinner, kept at --loglevel warning or above, sets the root logger
        # to DEBUG so that every record turns it: aiokafka and Faust then build a record for
        # each debug call, per message. A service has no terminal to spin in.
        self.spinner = None

    def on_setup_root_logger(self, logger, level) -> None:
        super().on_setup_root_logger(logger, level)
        collapser = RepeatedLogCollapser()
        for handler in logger.handlers:  # Faust's own handlers, set up as the worker starts
            handler.addFilter(collapser)

    def _schedule_shutdown(self, signal) -> None:
        first = not self._signal_stop_time
        super()._schedule_shutdown(signal)
        if first:
            timer = threading.Timer(STOP_GRACE_S, self._exit_now)
            timer.daemon = True
            timer.start()

    def _exit_now(self) -> None:
        print(f"soundtag worker: still stopping after {STOP_GRACE_S:.0f} s; exiting now "
              "(unfinished batches were never committed and will be re-read)", file=sys.stderr, flush=True)
        os._exit(1 if getattr(self.app, "gave_up", None) else 0)


class RepeatedLogCollapser(logging.Filter):
    """Lets the first of a run of identical messages through, then one line a minute.

    aiokafka logs every failed reconnect (dozens a second while a broker is away).
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._seen.get(key, (0.0, 0))
            if now - last < self.every_s:
                self._seen[key] = (last, suppressed + 1)
                return False
            self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more like it in the last {self.every_s:.0f} s)"
        return True


def _wait_for_broker(bootstrap: str) -> bool:
    """Wait (one line, not one per try) until the broker answers; False if stopped first."""
    from stream.producer import broker_reachable

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        announced = False
        while not broker_reachable(bootstrap, timeout_s=2.0):
            if not announced:
                print(f"soundtag worker: Kafka broker at {bootstrap} unreachable; waiting for it",
                      file=sys.stderr, flush=True)
                announced = True
            if stop.wait(2.0):
                print("soundtag worker: stopped while waiting for the broker", file=sys.stderr, flush=True)
                return False
        if announced:
            print(f"soundtag worker: Kafka broker at {bootstrap} is up", file=sys.stderr, flush=True)
        return True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stage_runner(settings: Settings) -> tuple[BatchRunner, str, Callable[[], None]]:
    """What tags the worker's batches, a line saying where, and how to stop it."""
    processes = worker_processes(settings)
    if not _on_cpu(settings):
        tagger = load_tagger(settings)  # a missing model stops here, with a clear message
        decoders = processes if processes > 1 else 0  # two cores: decoding on this process's threads
        runner = StageRunner(tagger, open_database(settings), settings.max_duration_s,
                             DatabaseWaiter(settings.db_retry_s), decode_processes=decoders)
        where = f"model {tagger.version} on {tagger.device}"
        where += f", decoding in {decoders} processes" if decoders else ""
        return runner, where, runner.close
    check_model(settings)  # a missing model stops here, before any process starts
    open_database(settings)  # the schema brought up to date once, here
    pool = ProcessPool(processes, pipeline_job(settings, device="cpu"))
    try:
        version = pool.wait_ready()
    except PoolError:
        pool.close(wait=False)
        raise
    stages = PooledStages(pool)
    return stages, f"model {version} in {processes} processes on cpu", stages.close


def _on_cpu(settings: Settings) -> bool:
    return settings.device != "cuda" and resolve_device(settings.device).type == "cpu"


def worker_processes(settings: Settings) -> int:
    """One per core as far as memory allows (each holds about 450 MB). On CPU each runs
    whole batches; on a GPU one process tags and the others decode for it (processes that
    each own a GPU were slower than one)."""
    return processes_that_fit(gpu=not _on_cpu(settings))


def run_worker(loglevel: str = "info") -> int:
    settings = get_settings()
    try:
        runner, where, close = _stage_runner(settings)
    except PoolError as exc:
        print(f"soundtag worker: {exc}", file=sys.stderr, flush=True)
        return 1
    from stream.app import create_app

    app = create_app(settings, runner)
    logging.getLogger("soundtag").setLevel(loglevel.upper())
    print(f"soundtag worker: {where}, "
          f"{settings.input_topic} → {settings.output_topic} (DLQ {settings.dlq_topic}) "
          f"via {settings.kafka_bootstrap}, batches of ≤{app.max_batch}, {app.pipeline_depth} in flight",
          file=sys.stderr, flush=True)
    if not _wait_for_broker(settings.kafka_bootstrap):
        close()
        return 0  # stopped while waiting: nothing was taken, nothing to hand back
    worker = _StopWithinSeconds(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    close()
    if app.gave_up:
        print(f"soundtag worker: stopped: {app.gave_up}", file=sys.stderr, flush=True)
        return 1
    return code
