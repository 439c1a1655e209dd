"""Bulk folder ingest: walk paths, tag in batches, store, skip what is already done.

Resumable by construction: each batch is committed in its own transaction and a clip
already tagged by the same model version is skipped, so after Ctrl-C (or a crash) a
re-run finishes the job.

Three stages, one thread each, so the model never waits for files or the database:
read and decode batch n+1 ‖ run the model on batch n ‖ encode and store batch n-1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from tagger.audio import AUDIO_EXTENSIONS, sha256_hex
from tagger.inference import Tagger
from tagger.pipeline import Decoded, Payload, Tagged, decode_payloads, finish_records, run_model
from tagger.repository import ClipRecord, save_clips, tagged_ids


@dataclass
class IngestSummary:
    tagged: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def clips_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        head = "interrupted: " if self.interrupted else ""
        return (f"{head}{self.tagged} tagged, {self.skipped} skipped, {self.failed} failed "
                f"in {self.seconds:.1f} s ({self.clips_per_second:.1f} clips/s)")


def find_audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line are always tried; folders contribute audio files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, onerror=None):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files)
                             if Path(f).suffix.lower() in AUDIO_EXTENSIONS and not f.startswith("."))
        else:
            found.append(path)  # a missing file becomes a recorded failure, not a crash
    return found


def _read(path: Path) -> Payload:
    try:
        return Payload(data=path.read_bytes(), source=str(path.resolve()))
    except OSError as exc:
        return Payload(data=b"", source=str(path.absolute()),
                       error=f"cannot read file: {exc.strerror or exc}")


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(files), size):
        yield files[i : i + size]


def ingest(
    paths: Iterable[str | Path],
    tagger: Tagger,
    sessions: sessionmaker[Session],
    batch_size: int = 32,
    max_duration_s: float | None = None,
    progress: bool = True,
) -> IngestSummary:
    files = find_audio_files(paths)
    summary = IngestSummary()
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="clip", desc="ingest", disable=not progress)

    def prepare(batch: list[Path]) -> tuple[Decoded, int]:
        payloads = [_read(p) for p in batch]
        # Hash first so clips already tagged by this model are skipped before decoding.
        for p in payloads:
            if p.data and p.clip_id is None:
                p.clip_id = sha256_hex(p.data)
        with sessions() as s:
            done = tagged_ids(s, [p.clip_id for p in payloads if p.clip_id], tagger.version)
        todo = [p for p in payloads if p.clip_id not in done]
        return decode_payloads(todo, max_duration_s), len(payloads) - len(todo)

    def store(tagged: Tagged) -> list[ClipRecord]:
        records = finish_records(tagged)
        with sessions.begin() as s:
            save_clips(s, records)
        return records

    def account(records: list[ClipRecord], skipped: int) -> None:
        summary.skipped += skipped
        for r in records:
            if r.status == "tagged":
                summary.tagged += 1
            else:
                summary.failed += 1
                summary.failures.append((r.source, r.error or "unknown error"))
        bar.update(len(records) + skipped)
        bar.set_postfix(tagged=summary.tagged, skipped=summary.skipped, failed=summary.failed)

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-decode")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-store")
    storing = None  # (future of the batch being stored, its skipped count)
    try:
        batches = _batches(files, batch_size)
        pending = reader.submit(prepare, next(batches)) if files else None
        while pending is not None:
            decoded, skipped = pending.result()
            nxt = next(batches, None)
            pending = reader.submit(prepare, nxt) if nxt is not None else None
            tagged = run_model(tagger, decoded)
            if storing is not None:
                done, storing = storing, None
                account(done[0].result(), done[1])
            storing = (writer.submit(store, tagged), skipped)
        if storing is not None:
            done, storing = storing, None
            account(done[0].result(), done[1])
    except KeyboardInterrupt:
        # Batches not yet stored are dropped; the one being stored finishes its own
        # transaction (below) or never started it. Committed batches stay either way.
        summary.interrupted = True
        if storing is not None and not storing[0].cancel():
            try:
                account(storing[0].result(), storing[1])
            except KeyboardInterrupt:
                pass
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary
