"""The stream's consume stage alone: a `soundtag worker` whose runner answers at once.

``python -m deploy.benchmarks.consume_only N REPORT`` runs the worker's own Faust app
(``stream.app.create_app``: the same consumer, holds, micro-batches, output events and
commits) with a runner that tags nothing, and writes to REPORT the CPU seconds its process
spent from the first batch until N messages had been answered. What that costs per message
is the worker process's share of the stream that the stage timings (decode, network,
store …) leave out: fetching, unpacking and handing each message through Faust.
Settings come from the environment as for the worker; a linger of 50 ms lets batches fill
to ``MAX_BATCH`` as they do while the stages are busy.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from stream.app import create_app
from stream.worker import _StopWithinSeconds
from tagger.config import get_settings
from tagger.records import ClipRecord, Payload, Status


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class AnswerAtOnce:
    """A ``BatchRunner`` that records every clip as tagged without looking at it."""

    batches_at_once = 2

    def __init__(self, expected: int, report: Path) -> None:
        self.expected, self.report = expected, report
        self.answered = 0
        self.cpu_at_first: float | None = None

    async def run(self, payloads: list[Payload]) -> list[ClipRecord]:
        if self.cpu_at_first is None:
            self.cpu_at_first = _cpu_s()
        records = [ClipRecord(clip_id=p.clip_id or p.source, source=p.source, status=Status.TAGGED,
                              model_version="consume-only", duration_s=5.0,
                              top3=[("dog", 0.9), ("rain", 0.05), ("wind", 0.01)]) for p in payloads]
        self.answered += len(payloads)
        if self.answered >= self.expected and not self.report.exists():
            partial = self.report.with_name(self.report.name + ".partial")
            partial.write_text(f"{self.answered} {_cpu_s() - self.cpu_at_first}\n")
            partial.replace(self.report)  # the benchmark sees the report whole or not at all
        return records


def main() -> None:
    expected, report = int(sys.argv[1]), Path(sys.argv[2])
    app = create_app(get_settings(), AnswerAtOnce(expected, report), linger_s=0.05)
    _StopWithinSeconds(app, loglevel="info", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
