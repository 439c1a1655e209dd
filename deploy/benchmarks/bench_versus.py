"""`soundtag ingest` and the stream path against the per-file script a user would write, on
the same clips, in one run; and the CPU each stage costs per clip, which bounds what any
pipeline can reach.

- ingest: the `soundtag ingest` command into a fresh PostgreSQL database (decode ‖ model ‖
  store, batches of 32, feature maps encoded and stored), in one process (`--processes 1`)
  and in one process per core (`--processes N`, each taking the next batch when free), taking turns
  twice (both in the process pool); timed by the command's own summary (the file walk and the model loading count,
  its imports do not);
- stream: the clips published to a real tansu broker, tagged by a `soundtag worker`
  (batches of 32), from the first send to the last row in PostgreSQL (the consumer-group
  join is not counted); the worker's stages in its pool, one process per core, twice;
- per-file alternative: for each file, decode, run the model at batch 1 (eager PyTorch with
  its default threads, what a script gets), and write the
  original service's JSON answer (`POST /inference` shape: predictions, every layer's
  map, the spectrogram, the waveform) next to it;
- stages: CPU seconds per clip (process time) of the lookup of clips already tagged,
  decoding (with the file's hash), the log-mel, the network with its feature-map taps at
  batch 32, the feature-map summaries and results, the encoding of what is stored, and
  the database write, each on one thread as the pipeline runs them; the two database
  stages with the PostgreSQL server process's CPU for them (it runs on the same cores).
  The bound is cores ÷ their sum (clips/s if every core did only this work). The stages
  are timed right after each round of ingest runs and each round of stream runs, and a
  round's efficiency is its rate ÷ the bound timed after it (this VM's speed drifts by
  15-30 % within minutes); the stage figures printed are from the cheapest reading after
  the ingest rounds. The stream's bound adds what only the stream runs on these cores,
  measured during its run: the broker's CPU per clip and this process's (the producer,
  and the poll that watches for the rows); the CPU of the worker (with its stage
  processes), the broker, PostgreSQL and this process per clip are reported as they
  were measured. The worker's own process also consumes: after each stream round that
  stage is timed alone (``deploy.benchmarks.consume_only``: the worker's Faust app with a
  runner that answers at once, the same clips, batches of 32), and the efficiency is given
  a second time with it counted as one more stage. A third reading needs no stage timing
  done apart, so the VM's drift between a run and that timing cannot move it: the share of
  the cores' time during the run that went to the bound's parties themselves (the stage
  processes, PostgreSQL, the broker, the publisher; all the counted CPU but the worker's
  own process), with the worker's own share and the whole machine's busy and stolen cores
  from /proc/stat beside it. The same for ingest: the CPU per clip of the command's tagging
  processes from their model loaded on (its summary line) and the PostgreSQL server's during
  the command, over the cores' time of the command's run (which also counts its file walk and
  model loading, so its start-up is counted as lost).

Real-time factor: seconds of audio tagged per second of wall time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.original_response import inference_response
from deploy.benchmarks.bench_stream import consume_only_cpu_ms, dev_broker, run_stream_config
from deploy.benchmarks.common import (
    cpu_name,
    load_tagger,
    process_cpu_s,
    processes_cpu_s,
    real_clips,
    scratch_postgres,
)
from tagger.audio import decode_file
from tagger.db import session_factory
from tagger.device import cpu_cores
from tagger.inference import Tagger
from tagger.pipeline import decode_payloads, finish_records, run_model
from tagger.records import Payload
from tagger.repository import save_clips, tagged_ids


def per_file_alternative(tagger, clips: list[Path], out_dir: Path) -> float:
    """Seconds of wall time for the obvious script; its answers are written to out_dir."""
    t0 = time.perf_counter()
    for p in clips:
        audio = decode_file(p)
        result = tagger.tag([audio])[0]
        answer = inference_response(audio, result, tagger.layer_maps(audio))
        (out_dir / f"{p.stem}.json").write_text(json.dumps(answer))
    return time.perf_counter() - t0


def cli_ingest_rate(files: list[Path], url: str, model_path: Path, processes: int, device: str = "cpu") -> float:
    """Clips/s of the `soundtag ingest --processes N` command, from its own summary line (from
    the file walk and the model loading to the last commit; the command's imports not counted)."""
    return cli_ingest_run(files, url, model_path, processes, device)["clips_per_s"]


def cli_ingest_run(files: list[Path], url: str, model_path: Path, processes: int, device: str = "cpu",
                   ) -> dict[str, float]:
    """The command's clips/s and the CPU ms per clip of its tagging processes (both from its
    summary line), and the PostgreSQL server's CPU seconds while the command ran (which also
    count its schema check at start, a few milliseconds)."""
    env = {**os.environ, "SOUNDTAG_DATABASE_URL": url, "SOUNDTAG_MODEL_PATH": str(model_path),
           "SOUNDTAG_DEVICE": device, "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1"}
    server_before = processes_cpu_s("postgres")
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", "--quiet", "--processes", str(processes),
                           *map(str, files)], env=env, capture_output=True, text=True, timeout=1800, check=True)
    server_s = processes_cpu_s("postgres") - server_before
    # Its clips/s, not clips ÷ its seconds: those are printed to a tenth (±0.6 % of an 8 s run).
    match = re.search(r"(\d+) tagged, .* in [\d.]+ s \(([\d.]+) clips/s(?:; ([\d.]+) ms of CPU per clip)?\)",
                      done.stdout)
    if match is None or int(match[1]) != len(files):
        raise RuntimeError(f"unexpected ingest summary: {done.stdout!r} {done.stderr[-500:]!r}")
    return {"clips_per_s": float(match[2]), "cpu_ms_per_clip": float(match[3]) if match[3] else float("nan"),
            "postgresql_s": server_s}


def stage_cpu(tagger, clips: list[Path], url: str, batch: int = 32,
              clock: Callable[[], float] = time.process_time, sync: Callable[[], None] = lambda: None,
              ) -> dict[str, float]:
    """CPU seconds per clip of each stage, run one after the other on batches of 32 the way
    the pipeline runs them, each on one thread (the model's own thread count is the
    tagger's). On a GPU: ``clock`` the wall clock and ``sync`` waiting for the device, so
    each stage's share includes its device time.

    The database stages (the lookup of clips already tagged, the write) also count the CPU
    of the PostgreSQL server process serving them, when it runs on this machine: it takes
    its share of the same cores."""
    cpu = dict.fromkeys(("lookup", "decode", "log_mel", "model", "summaries_results", "encoding", "store"), 0.0)
    sessions = session_factory(url)
    session = sessions()
    # On the wall clock (a GPU) the server's time is already in the stage's.
    server_cpu = _server_cpu(session) if clock is time.process_time else (lambda: 0.0)

    @contextmanager
    def timed(stage: str, server: bool = False) -> Iterator[None]:
        sync()
        t, t_server = clock(), server_cpu() if server else 0.0
        yield
        sync()
        cpu[stage] += clock() - t + (server_cpu() - t_server if server else 0.0)

    torch.set_num_threads(1)  # as on the pipeline's decode threads
    for start in range(0, len(clips), batch):
        with timed("lookup", server=True):
            tagged_ids(session, [p.name for p in clips[start : start + batch]], tagger.version)
            session.commit()
        with timed("decode"):
            decoded = decode_payloads([Payload(data=b"", source=str(p), path=p) for p in clips[start : start + batch]])
        with timed("log_mel"):
            decoded.features = [tagger.features(a) for _, a in decoded.audio]
        with timed("model"):
            # The network alone, as tagging runs it (these clips are 5 s: one window each).
            tagger.engine.summarized(torch.cat([f for f in decoded.features if f is not None]))
        with timed("summaries_results"):
            tagged = run_model(tagger, decoded)  # the network again, taken off below
        with timed("encoding"):
            records = finish_records(tagged)
        with timed("store", server=True):
            save_clips(session, records)
            session.commit()
    session.close()
    cpu["summaries_results"] -= cpu["model"]
    return {k: v / len(clips) for k, v in cpu.items()}


def _server_cpu(session: Session) -> Callable[[], float]:
    """CPU seconds so far of the PostgreSQL process serving ``session`` (Linux /proc), or
    a constant 0 where it is not on this machine or not PostgreSQL."""
    if session.get_bind().dialect.name != "postgresql":
        return lambda: 0.0
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    session.commit()
    if not Path(f"/proc/{pid}/stat").exists():
        return lambda: 0.0
    return lambda: process_cpu_s(pid)


def run(quick: bool = False) -> dict[str, Any]:
    tagger, model_path = load_tagger()
    clips = real_clips(40 if quick else 1000)
    audio_s = sum(decode_file(p).duration_s for p in clips)
    cores = cpu_cores()
    figures: dict[str, Any] = {"cpu": cpu_name(), "cores": cores, "engine": tagger.engine.name,
                               "model_threads": tagger.threads, "model_version": tagger.version,
                               "clips": len(clips), "audio_seconds": round(audio_s, 1)}
    folder = Path(tempfile.mkdtemp(prefix="soundtag-versus-"))
    answers = folder / "answers"
    answers.mkdir()
    try:
        for p in clips:
            shutil.copy(p, folder / p.name)
        # What a user's script gets: eager PyTorch with its default threads (all cores).
        plain = Tagger.load(model_path, device="cpu", engine="torch", threads=cores)
        per_file_alternative(plain, clips[:4], answers)  # warm-up
        alt_s = per_file_alternative(plain, clips, answers)
        # The command in one process and in one process per core, taking turns: this VM's
        # speed drifts by 15-30 % within minutes, so one reading of each could compare two
        # machines. Both readings include loading the model (in every process).
        files = [folder / p.name for p in clips]
        rounds: dict[int, list[float]] = {1: [], cores: []}
        ingest_in_run: dict[int, list[float]] = {1: [], cores: []}
        stage_runs = []
        for _ in range(1 if quick else 2):
            for processes in rounds:
                with scratch_postgres() as url:
                    run_figures = cli_ingest_run(files, url, model_path, processes)
                rounds[processes].append(run_figures["clips_per_s"])
                # As for the stream below: the share of the cores' time during the run that
                # went to its stages as they ran (the tagging processes once loaded, and the
                # database server), needing no stage timing done apart.
                ingest_in_run[processes].append(
                    (run_figures["cpu_ms_per_clip"] / 1000 + run_figures["postgresql_s"] / len(files))
                    * run_figures["clips_per_s"] / cores)
            # The stages timed right after each round, so that each round's efficiency
            # compares two readings of the same stretch of this VM's drifting speed.
            with scratch_postgres() as url:
                stage_runs.append(stage_cpu(tagger, clips, url))
        stages = min(stage_runs, key=lambda run: sum(run.values()))
        # The stream path: a real broker and a `soundtag worker` (batches of 32), its stages
        # in its pool's processes, one per core.
        streams: dict[str, list[dict[str, Any]]] = {"processes": []}
        stream_stage_runs = []
        consume_ms: list[float] = []  # the worker's consume stage alone, after each round
        with dev_broker(folder) as (bootstrap, broker_pid), scratch_postgres("soundtag_bench_versus") as url:
            values = [p.read_bytes() for p in clips]
            for _ in range(1 if quick else 2):
                streams["processes"].append(run_stream_config(bootstrap, url, model_path, values, None, folder,
                                                              broker_pid=broker_pid))
                with scratch_postgres() as stages_url:  # as for ingest: the stages right after each round
                    stream_stage_runs.append(stage_cpu(tagger, clips, stages_url))
                consume_ms.append(consume_only_cpu_ms(bootstrap, values, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ingest_rate, in_processes = statistics.mean(rounds[1]), statistics.mean(rounds[cores])
    alt_rate = len(clips) / alt_s
    bound = cores / sum(stages.values())
    bounds = [cores / sum(run.values()) for run in stage_runs]  # one per round, as timed after it

    def efficiency(rates: list[float]) -> float:
        return statistics.mean(rate / b for rate, b in zip(rates, bounds, strict=True))

    stream_rate = statistics.mean(run["clips_per_s"] for run in streams["processes"])
    stream_cpu = {party: round(statistics.mean(run["cpu_ms_per_clip"][party] for run in streams["processes"]), 2)
                  for party in streams["processes"][0]["cpu_ms_per_clip"]}

    # Each stream round's bound: the stages timed after it, plus the broker and the publisher
    # as measured during it (what only the stream runs on these cores); its efficiency.
    def stream_only_s(run: dict[str, Any]) -> float:
        return (run["cpu_ms_per_clip"]["broker"] + run["cpu_ms_per_clip"]["producer_and_watcher"]) / 1000

    stream_bounds = {mode: [cores / (sum(stage_run.values()) + stream_only_s(run))
                            for run, stage_run in zip(runs, stream_stage_runs, strict=True)]
                     for mode, runs in streams.items()}
    stream_efficiency = {mode: [run["clips_per_s"] / b for run, b in zip(runs, stream_bounds[mode], strict=True)]
                         for mode, runs in streams.items()}
    # The same with the worker's consume stage (Faust fetching and handing over each
    # message, its events and commits) timed alone and counted as one more stage.
    consume_bounds = [cores / (sum(stage_run.values()) + stream_only_s(run) + ms / 1000)
                      for run, stage_run, ms in zip(streams["processes"], stream_stage_runs, consume_ms, strict=True)]
    consume_efficiency = [run["clips_per_s"] / b for run, b in zip(streams["processes"], consume_bounds, strict=True)]
    # Against the stages' CPU in the same run, so immune to the drift between a run and a
    # later stage reading: the share of the cores' time that went to the bound's parties as
    # they ran (the stage processes, PostgreSQL, the broker, the publisher), i.e. the whole
    # counted CPU less the worker's own process. The rest of the cores' time is that process
    # (Faust's consuming and producing) and cores not kept busy.
    def in_run_share(run: dict[str, Any]) -> float:
        counted_ms = sum(run["cpu_ms_per_clip"].values()) - run["worker_main_cpu_ms_per_clip"]
        return counted_ms / 1000 * run["clips_per_s"] / cores

    in_run = [in_run_share(run) for run in streams["processes"]]
    figures.update({
        "ingest_clips_per_s": round(ingest_rate, 1),
        "ingest_clips_per_s_rounds": [round(r, 1) for r in rounds[1]],
        "ingest_real_time_factor": round(ingest_rate * audio_s / len(clips)),
        "per_file_clips_per_s": round(alt_rate, 1),
        "per_file_real_time_factor": round(alt_rate * audio_s / len(clips)),
        "stream_clips_per_s": round(stream_rate, 1),
        "stream_clips_per_s_rounds": [run["clips_per_s"] for run in streams["processes"]],
        "stream_real_time_factor": round(stream_rate * audio_s / len(clips)),
        "ingest_to_per_file_ratio": round(ingest_rate / alt_rate, 2),
        "stream_to_per_file_ratio": round(stream_rate / alt_rate, 2),
        "stream_cpu_ms_per_clip": stream_cpu,
        "stream_worker_main_cpu_ms_per_clip_rounds": [run["worker_main_cpu_ms_per_clip"]
                                                      for run in streams["processes"]],
        "stream_cores_busy_rounds": [run["cores_busy"] for run in streams["processes"]],
        "stream_bound_clips_per_s": round(statistics.mean(stream_bounds["processes"]), 1),
        "stream_efficiency": round(statistics.mean(stream_efficiency["processes"]), 2),
        "stream_efficiency_rounds": [round(e, 2) for e in stream_efficiency["processes"]],
        "stream_consume_stage_cpu_ms_per_clip_readings": [round(ms, 3) for ms in consume_ms],
        "stream_efficiency_with_consume_stage": round(statistics.mean(consume_efficiency), 2),
        "stream_efficiency_with_consume_stage_rounds": [round(e, 2) for e in consume_efficiency],
        "stream_efficiency_in_run": round(statistics.mean(in_run), 2),
        "stream_efficiency_in_run_rounds": [round(e, 2) for e in in_run],
        "stream_worker_main_share_rounds": [round(run["worker_main_cpu_ms_per_clip"] / 1000 * run["clips_per_s"]
                                                  / cores, 3) for run in streams["processes"]],
        "stream_machine_cores_busy_rounds": [run["machine_cores_busy"] for run in streams["processes"]],
        "stream_machine_cores_stolen_rounds": [run["machine_cores_stolen"] for run in streams["processes"]],
        "cpu_ms_per_clip_stages_sum_after_stream_rounds": [round(1000 * sum(run.values()), 2)
                                                            for run in stream_stage_runs],
        **{f"cpu_ms_per_clip_{k}": round(1000 * v, 2) for k, v in stages.items()},
        "cpu_ms_per_clip_stages_sum_readings": [round(1000 * sum(run.values()), 2) for run in stage_runs],
        "bound_clips_per_s": round(bound, 1),
        "bound_clips_per_s_readings": [round(b, 1) for b in bounds],
        "ingest_efficiency": round(efficiency(rounds[1]), 2),
        f"ingest_{cores}_processes_clips_per_s": round(in_processes, 1),
        f"ingest_{cores}_processes_clips_per_s_rounds": [round(r, 1) for r in rounds[cores]],
        f"ingest_{cores}_processes_real_time_factor": round(in_processes * audio_s / len(clips)),
        f"ingest_{cores}_processes_to_per_file_ratio": round(in_processes / alt_rate, 2),
        f"ingest_{cores}_processes_efficiency": round(efficiency(rounds[cores]), 2),
        f"ingest_{cores}_processes_efficiency_rounds": [round(r / b, 2) for r, b in
                                                         zip(rounds[cores], bounds, strict=True)],
        "ingest_efficiency_in_run_rounds": [round(e, 2) for e in ingest_in_run[1]],
        f"ingest_{cores}_processes_efficiency_in_run": round(statistics.mean(ingest_in_run[cores]), 2),
        f"ingest_{cores}_processes_efficiency_in_run_rounds": [round(e, 2) for e in ingest_in_run[cores]],
    })
    return figures
