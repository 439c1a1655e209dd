"""Events: a clip's windows turned into timestamped sound events, and their export formats.

Windows are 5 s long and overlap by half, so a window's label says "somewhere in these
5 s". Neighbouring windows with one label merge into one event; silence and unknown
windows are not events. Each window owns the middle of its overlaps with its neighbours;
an event's edges are then moved to the first and last loud frame (10 dB above the
recording's quiet level) within what its windows cover, so an onset is placed to a frame
(23 ms), not to a window hop (2.5 s). A frame that is loud but belongs to a neighbour's
event stays with that neighbour; a labelled window with nothing audible of its own left
makes no event.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagger.verdicts import SILENCE_GATE_DBFS, Verdict

ABOVE_QUIET_DB = 10.0  # a frame this far above the recording's quiet level is part of an event
QUIET_PERCENTILE = 10  # the recording's quiet level: this percentile of its frame levels
FORMATS = ("json", "csv", "audacity", "raven")


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    verdict: str
    label: str
    confidence: float


def detect_events(windows: list[Window], levels_dbfs: np.ndarray, frame_s: float,
                  gate_dbfs: float = SILENCE_GATE_DBFS) -> list[dict[str, Any]]:
    """``windows`` in time order; ``levels_dbfs`` the clip's frame levels, frame i centred
    at ``i * frame_s``. Returns [{start_s, end_s, label, confidence}] in time order."""
    if not windows:
        return []
    duration = windows[-1].end_s
    owned = _owned_spans(windows, duration)
    runs: list[list[int]] = []
    for k, w in enumerate(windows):
        if w.verdict != Verdict.LABEL:
            continue
        if runs and runs[-1][-1] == k - 1 and windows[k - 1].label == w.label:
            runs[-1].append(k)
        else:
            runs.append([k])
    levels = np.nan_to_num(np.asarray(levels_dbfs, dtype=np.float64), nan=-np.inf)
    finite = levels[np.isfinite(levels)]
    quiet = float(np.percentile(finite, QUIET_PERCENTILE)) if len(finite) else gate_dbfs
    events: list[dict[str, Any]] = []
    previous_end = 0.0
    for run in runs:
        first, last = run[0], run[-1]
        # What the run's windows cover, less what labelled neighbours own.
        lo = owned[first][0] if first > 0 and windows[first - 1].verdict == Verdict.LABEL else windows[first].start_s
        hi = owned[last][1] if last + 1 < len(windows) and windows[last + 1].verdict == Verdict.LABEL \
            else windows[last].end_s
        lo = max(lo, previous_end)
        span = _loud_span(levels, frame_s, lo, hi, gate_dbfs, quiet)
        if span is None:  # nothing audible left of it: its sound is a neighbour's event
            continue
        start, end = span
        previous_end = end
        events.append({"start_s": round(start, 3), "end_s": round(end, 3), "label": windows[first].label,
                       "confidence": round(float(np.mean([windows[k].confidence for k in run])), 4)})
    return events


def _owned_spans(windows: list[Window], duration: float) -> list[tuple[float, float]]:
    spans = []
    for k, w in enumerate(windows):
        start = 0.0 if k == 0 else (w.start_s + windows[k - 1].end_s) / 2
        end = duration if k + 1 == len(windows) else (windows[k + 1].start_s + w.end_s) / 2
        spans.append((start, end))
    return spans


def _loud_span(levels: np.ndarray, frame_s: float, lo: float, hi: float, gate_dbfs: float,
               quiet: float) -> tuple[float, float] | None:
    """From the first to the last loud frame between ``lo`` and ``hi`` s. Loud: 10 dB over the
    recording's quiet level, or, in a span with less range than that (steady rain, an
    engine), within 10 dB of the span's loudest frame; never below the silence gate."""
    first, stop = max(0, int(np.ceil(lo / frame_s))), min(len(levels), int(np.floor(hi / frame_s)) + 1)
    span = levels[first:stop]
    if len(span) == 0 or not span.max() >= gate_dbfs:
        return None
    line = max(gate_dbfs, min(quiet + ABOVE_QUIET_DB, float(span.max()) - ABOVE_QUIET_DB))
    hits = np.flatnonzero(span >= line)
    return float(max(lo, (first + hits[0]) * frame_s)), float(min(hi, (first + hits[-1] + 1) * frame_s))


def events_as(events: list[dict[str, Any]], fmt: str) -> str:
    """Events as text: ``csv`` (start_s,end_s,label,confidence), ``audacity`` (a label track:
    start, end, label, tab-separated) or ``raven`` (a Raven selection table)."""
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["start_s", "end_s", "label", "confidence"])
        writer.writerows([e["start_s"], e["end_s"], e["label"], e["confidence"]] for e in events)
    elif fmt == "audacity":
        for e in events:
            out.write(f"{e['start_s']:.6f}\t{e['end_s']:.6f}\t{e['label']}\n")
    elif fmt == "raven":
        out.write("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"
                  "\tAnnotation\tConfidence\n")
        for n, e in enumerate(events, start=1):
            out.write(f"{n}\tSpectrogram 1\t1\t{e['start_s']:.6f}\t{e['end_s']:.6f}\t0\t22050"
                      f"\t{e['label']}\t{e['confidence']:.4f}\n")
    else:
        raise ValueError(f"unknown events format {fmt!r}: one of {', '.join(FORMATS)}")
    return out.getvalue()
