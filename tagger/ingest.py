"""Bulk folder ingest: walk paths, tag in batches, store, skip what is already done.

Resumable by construction: each batch is committed in its own transaction and a clip
already tagged by the same model version is skipped, so after Ctrl-C (or a crash) a
re-run finishes the job.

Every file in a folder is looked at: audio (by name or by content) is tagged or failed
with its reason; anything else is counted and listed as not audio. The stage runner
overlaps hashing and decoding batches n+1 and n+2 ‖ the model on batch n ‖ storing batch
n-1, and waits out a database outage for a bounded time.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from tagger.audio import file_sha256
from tagger.files import find_audio_files
from tagger.inference import Tagger
from tagger.pipeline import Decoded
from tagger.pool import PoolError, Worker
from tagger.records import ClipRecord, Payload, Status
from tagger.repository import tagged_ids
from tagger.stages import DatabaseUnavailable, DatabaseWaiter, StageRunner, died_on, tag_and_store

READ_AHEAD = 2  # batches hashed and decoded ahead of the model


@dataclass
class IngestSummary:
    tagged: int = 0
    skipped: int = 0  # already tagged by this model version
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[str] = field(default_factory=list)
    interrupted: bool = False
    gave_up: str | None = None  # why the run stopped early (the database stayed away)
    # CPU seconds of the processes that tagged, from their model loaded to their last batch
    # (all their threads; not the database server's); None where not known (decoding processes)
    cpu_s: float | None = None

    @property
    def clips_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_clip(self) -> float | None:
        """CPU per clip looked at (tagged, already tagged or failed), where known."""
        clips = self.tagged + self.skipped + self.failed
        return 1000 * self.cpu_s / clips if self.cpu_s is not None and clips else None

    def __str__(self) -> str:
        head = "interrupted: " if self.interrupted else "stopped early: " if self.gave_up else ""
        cpu_ms = self.cpu_ms_per_clip
        cpu = f"; {cpu_ms:.2f} ms of CPU per clip" if cpu_ms is not None else ""
        return (f"{head}{self.tagged} tagged, {self.skipped} already tagged, {self.failed} failed, "
                f"{len(self.not_audio)} not audio in {self.seconds:.1f} s ({self.clips_per_second:.1f} clips/s{cpu})")

    def add(self, part: IngestSummary) -> None:
        """Count a part of the run (a batch, or a process's share) into this summary."""
        self.tagged += part.tagged
        self.skipped += part.skipped
        self.failed += part.failed
        self.failures.extend(part.failures)
        self.interrupted = self.interrupted or part.interrupted
        self.gave_up = self.gave_up or part.gave_up
        if part.cpu_s is not None:
            self.cpu_s = (self.cpu_s or 0.0) + part.cpu_s


def _payload(path: Path) -> Payload:
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return Payload(data=b"", source=str(path.absolute()), error=f"cannot read file: {exc.strerror or exc}")
    return Payload(data=b"", source=str(path.resolve()), clip_id=digest, path=path, sha256=digest)


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(files), size):
        yield files[i : i + size]


def ingest(paths: Iterable[str | Path], tagger: Tagger, sessions: sessionmaker[Session], batch_size: int = 32,
           max_duration_s: float | None = None, progress: bool = True, waiter: DatabaseWaiter | None = None,
           overlap: bool = True, decode_processes: int = 0) -> IngestSummary:
    """Tag the audio under ``paths`` in this process (``ingest_files`` on what
    ``find_audio_files`` finds; a path that does not exist raises ``FileNotFoundError``)."""
    found = find_audio_files(paths)
    summary = ingest_files(found.audio, tagger, sessions, batch_size, max_duration_s, progress, waiter, overlap,
                           decode_processes)
    summary.not_audio = [str(p) for p in found.not_audio]
    return summary


def ingest_files(
    files: list[Path],
    tagger: Tagger,
    sessions: sessionmaker[Session],
    batch_size: int = 32,
    max_duration_s: float | None = None,
    progress: bool = True,
    waiter: DatabaseWaiter | None = None,
    overlap: bool = True,
    decode_processes: int = 0,
) -> IngestSummary:
    """Tag ``files`` in this process.

    ``overlap`` runs the stages on their own threads, batches overlapping (what the process
    that owns a GPU runs, with ``decode_processes`` decoding in the pool); without it each
    batch goes through them in turn on this thread, which costs the least CPU per clip
    where other processes fill the other cores (a pool process's ``ingest_batch_task``)."""
    summary = IngestSummary()
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="clip", desc="ingest", disable=not progress)
    waiter = waiter or DatabaseWaiter()

    def still_to_tag(batch: list[Path]) -> tuple[list[Payload], int]:
        # Hash first so clips already tagged by this model are skipped before decoding.
        payloads = [_payload(p) for p in batch]
        ids = [p.clip_id for p in payloads if p.clip_id]

        def lookup() -> set[str]:
            with sessions() as s:
                return tagged_ids(s, ids, tagger.version)

        done = waiter.run(lookup, "checking which clips are already tagged")
        todo = [p for p in payloads if p.clip_id not in done]
        return todo, len(payloads) - len(todo)

    def account(records: list[ClipRecord], skipped: int) -> None:
        summary.skipped += skipped
        for r in records:
            if r.status == Status.TAGGED:
                summary.tagged += 1
            else:
                summary.failed += 1
                summary.failures.append((r.source, r.error or "unknown error"))
        bar.update(len(records) + skipped)
        bar.set_postfix(tagged=summary.tagged, skipped=summary.skipped, failed=summary.failed)

    try:
        if overlap:
            runner = StageRunner(tagger, sessions, max_duration_s, waiter, decode_processes)
            _overlapped(_batches(files, batch_size), still_to_tag, runner, account, summary)
        else:
            for batch in _batches(files, batch_size):
                todo, skipped = still_to_tag(batch)
                account(tag_and_store(tagger, sessions, todo, max_duration_s, waiter), skipped)
    except KeyboardInterrupt:
        summary.interrupted = True  # committed batches stay; a re-run skips them
    except (DatabaseUnavailable, PoolError) as exc:
        summary.gave_up = str(exc)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _overlapped(batches: Iterator[list[Path]], still_to_tag: Callable[[list[Path]], tuple[list[Payload], int]],
                runner: StageRunner, account: Callable[[list[ClipRecord], int], None],
                summary: IngestSummary) -> None:
    """Hashing and decoding batches n+1 and n+2 ‖ the model on batch n ‖ storing batch n-1."""

    def prepare(batch: list[Path]) -> tuple[Decoded, int]:
        todo, skipped = still_to_tag(batch)
        return runner.decode(todo).result(), skipped

    # Two batches read ahead: the decoders start on batch n+2 as soon as n+1 is done, so
    # they fill the cores while the model still works on batch n.
    reader = ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="ingest-read")
    storing: tuple[Future[list[ClipRecord]], int] | None = None

    def settle() -> None:
        # `storing` stays set while its result is awaited: a Ctrl-C then still counts it.
        nonlocal storing
        if storing is not None:
            records = storing[0].result()
            skipped, storing = storing[1], None
            account(records, skipped)

    try:
        pending = deque(reader.submit(prepare, b) for b in itertools.islice(batches, READ_AHEAD))
        while pending:
            decoded, skipped = pending.popleft().result()
            if (nxt := next(batches, None)) is not None:
                pending.append(reader.submit(prepare, nxt))
            tagged = runner.tag(decoded).result()
            settle()
            storing = (runner.store(tagged), skipped)
        settle()
    except KeyboardInterrupt:
        # Batches not yet stored are dropped; the one being stored finishes its own
        # transaction (below) or never started it. Committed batches stay either way.
        summary.interrupted = True
        if storing is not None and not storing[0].cancel():
            try:
                settle()
            except (KeyboardInterrupt, DatabaseUnavailable):
                pass
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        runner.close()


def ingest_batch_task(worker: Worker, files: list[Path]) -> IngestSummary:
    """One batch of files in a pool process: hashed, looked up, tagged and stored in turn
    on its thread; its summary, with the CPU it took."""
    tagger, sessions, waiter = worker.pipeline()
    assert worker.job is not None
    cpu_start = time.process_time()
    summary = ingest_files(files, tagger, sessions, batch_size=max(1, len(files)),
                           max_duration_s=worker.job.max_duration_s, progress=False, waiter=waiter, overlap=False)
    summary.cpu_s = time.process_time() - cpu_start
    return summary


def died_on_file(path: Path, how: str) -> Payload:
    """A file its pool process died on twice, as the failure to store (by its content hash)."""
    payload = _payload(path)
    return payload if payload.error else died_on(payload, how)
