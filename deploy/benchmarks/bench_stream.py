"""Issue 4 figures: broker → Faust worker → PostgreSQL.

A real tansu broker and real `soundtag worker` processes; real 5 s ESC-50 clips as
message values. For each worker configuration a fresh input topic and consumer group,
so runs never share state, and a warm-up clip so the group join (~30 s on this broker)
is not counted.

- sustained throughput: N clips published as fast as the producer goes; clips/s from the
  first send to the last row visible in PostgreSQL; ratio to the model-only rate (forward
  pass with feature taps at batch 32) measured in this process just before;
- latency: clips published one by one at half the sustained rate; publish → row visible
  (polled every 20 ms), p50 / p99; the worker's batch sizes (from its log) and its CPU per
  clip (process time from /proc) meanwhile;
- the sustained throughput with two workers in the consumer group, each on half the
  cores (its CPU affinity, as a container's CPU set gives it: one pool process per core).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from deploy.benchmarks.common import (
    load_tagger,
    machine_cpu_s,
    model_windows,
    percentile,
    process_cpu_s,
    process_tree_cpu_s,
    processes_cpu_s,
    real_clips,
    scratch_postgres,
    time_model,
)
from deploy.dev_broker import start_broker
from deploy.processes import free_port, stop

PARTITIONS = 4
FEW_PENDING = 64  # below this many ids RowWatcher asks for them by id
FEW_PENDING_INTERVAL_S = 0.01  # and asks that often: the run's end is seen within 10 ms, not 100


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg", "postgresql")


class RowWatcher:
    """Records when each expected clip id first becomes visible in PostgreSQL.

    Its polls run on the cores it measures, so they must stay cheap: ``id = ANY(ids)``
    costs the server about 15 ms per poll for 1000 ids (a few per cent of two cores at ten
    polls a second), so while many are pending it reads every row under the ids' common
    prefix instead (about 1 ms for 3000 rows), and only the last few by id, then every
    ``FEW_PENDING_INTERVAL_S`` (the last row's time ends a throughput run)."""

    def __init__(self, url: str, ids: list[str], interval: float = 0.02) -> None:
        self.url, self.pending, self.interval = _plain(url), set(ids), interval
        self.prefix = os.path.commonprefix(ids)  # noqa: RUF071 (clip ids, not paths: characters are meant)
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while self.pending and not self._stop.is_set():
                if self.prefix and len(self.pending) > FEW_PENDING:
                    rows = conn.execute("SELECT id FROM clips WHERE starts_with(id, %s)", (self.prefix,)).fetchall()
                else:
                    rows = conn.execute("SELECT id FROM clips WHERE id = ANY(%s)", (list(self.pending),)).fetchall()
                now = time.time()
                for (cid,) in rows:
                    if cid in self.pending:
                        self.seen[cid] = now
                        self.pending.discard(cid)
                time.sleep(min(self.interval, FEW_PENDING_INTERVAL_S) if len(self.pending) <= FEW_PENDING
                           else self.interval)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stop.set()
        if self.pending:
            raise TimeoutError(f"{len(self.pending)} clips not stored within {timeout} s")


def _start_workers(env: dict, log_paths: list[Path], cpus: list[set[int]] | None = None) -> list[subprocess.Popen]:
    """All at once, so they join the consumer group together (one join, no rebalance later);
    ``cpus``: each worker's CPU affinity."""
    def on(i: int):
        return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus[i]))

    procs = [subprocess.Popen([sys.executable, "-m", "deploy.cli", "worker"], env={**os.environ, **env},
                              stdout=open(log_path, "w"), stderr=subprocess.STDOUT, preexec_fn=on(i))
             for i, log_path in enumerate(log_paths)]
    deadline = time.time() + 300
    for proc, log_path in zip(procs, log_paths, strict=True):
        while "Worker ready" not in log_path.read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
    return procs


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    admin.close()


def _producer(bootstrap: str) -> KafkaProducer:
    """The benchmark's publisher: room for a whole clip per message, batches of what 5 ms brings."""
    return KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000, linger_ms=5)


def _send(producer: KafkaProducer, topic: str, clip_id: str, value: bytes) -> None:
    producer.send(topic, key=clip_id.encode(), value=value,
                  headers=[("content-type", b"audio/ogg"), ("source", b"benchmark"),
                           ("sent-at", str(time.time()).encode())])


def _cpu_by_party(workers: list[subprocess.Popen], broker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of everything the stream runs on this machine: the workers, the
    broker, PostgreSQL's server and this process (the producer and the row watcher)."""
    return {"workers": sum(process_tree_cpu_s(proc.pid) for proc in workers),
            "broker": process_cpu_s(broker_pid) if broker_pid else 0.0,
            "postgresql": processes_cpu_s("postgres"),
            "producer_and_watcher": process_cpu_s(os.getpid())}


def run_stream_config(bootstrap: str, db_url: str, model_path: Path, clips: list[bytes],
                      latency_rate: float | None, work: Path, workers: int = 1, device: str = "cpu",
                      broker_pid: int | None = None, worker_cpus: list[set[int]] | None = None) -> dict:
    """One configuration on a fresh topic and consumer group. ``worker_cpus``: each worker's
    CPU affinity (default: all cores; a worker runs one pool process per core it may use)."""
    run = uuid.uuid4().hex[:6]
    topic = f"audio-clips-{run}"
    _create_topic(bootstrap, topic)
    env = {"SOUNDTAG_DATABASE_URL": db_url, "SOUNDTAG_KAFKA_BOOTSTRAP": bootstrap,
           "SOUNDTAG_MODEL_PATH": str(model_path), "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": device,
           "SOUNDTAG_CONSUMER_GROUP": f"bench-{run}", "SOUNDTAG_INPUT_TOPIC": topic}
    log_paths = [work / f"worker-{run}-{i}.log" for i in range(workers)]
    procs = _start_workers(env, log_paths, worker_cpus)
    producer = _producer(bootstrap)
    try:
        warm = [f"warm-{run}-{i}" for i in range(4 * PARTITIONS)]  # keys that reach every partition
        watcher = RowWatcher(db_url, warm)
        for cid in warm:
            _send(producer, topic, cid, clips[0])
        producer.flush()
        watcher.wait(300)  # group join + first batch

        ids = [f"tp-{run}-{i}" for i in range(len(clips))]
        watcher = RowWatcher(db_url, ids, interval=0.1)
        cpu_before = _cpu_by_party(procs, broker_pid)
        main_before = sum(process_cpu_s(proc.pid) for proc in procs)
        machine_before = machine_cpu_s()
        t0 = time.time()
        for cid, value in zip(ids, clips, strict=True):
            _send(producer, topic, cid, value)
        producer.flush()
        watcher.wait(1200)
        seconds = max(watcher.seen.values()) - t0
        cpu = {party: after - cpu_before[party] for party, after in _cpu_by_party(procs, broker_pid).items()}
        main_s = sum(process_cpu_s(proc.pid) for proc in procs) - main_before
        machine_busy_s, machine_steal_s = (after - before for after, before in zip(machine_cpu_s(), machine_before,
                                                                                   strict=True))
        out = {"clips": len(ids), "seconds": round(seconds, 2), "clips_per_s": round(len(ids) / seconds, 2),
               "cpu_ms_per_clip": {party: round(1000 * s / len(ids), 2) for party, s in cpu.items()},
               # of the workers' share, what their own processes spent (Faust: fetching, handing
               # over, producing the events), their stage processes left out
               "worker_main_cpu_ms_per_clip": round(1000 * main_s / len(ids), 2),
               "cores_busy": round(sum(cpu.values()) / seconds, 2),
               # the whole machine, from /proc/stat: also what no process is charged for
               "machine_cores_busy": round(machine_busy_s / seconds, 2),
               "machine_cores_stolen": round(machine_steal_s / seconds, 2)}
        if any("generation 2" in p.read_text() for p in log_paths):
            out["rebalanced_during_run"] = True  # a worker left or joined: the figure includes a pause

        if latency_rate:
            n = min(len(clips), max(100, int(latency_rate * 40)))  # about 40 s of steady traffic
            lat_ids = [f"lat-{run}-{i}" for i in range(n)]
            watcher = RowWatcher(db_url, lat_ids)
            log_offsets = [p.stat().st_size for p in log_paths]
            workers_cpu_before = sum(process_tree_cpu_s(proc.pid) for proc in procs)
            sent: dict[str, float] = {}
            start = time.time()
            for i, (cid, value) in enumerate(zip(lat_ids, clips[:n], strict=True)):
                time.sleep(max(0.0, start + i / latency_rate - time.time()))
                sent[cid] = time.time()
                _send(producer, topic, cid, value)
                producer.flush()
            watcher.wait(600)
            cpu_s = sum(process_tree_cpu_s(proc.pid) for proc in procs) - workers_cpu_before
            sizes = [float(b) for p, offset in zip(log_paths, log_offsets, strict=True)
                     for b in re.findall(r"batch of (\d+)", p.read_bytes()[offset:].decode())]
            lat = [watcher.seen[c] - sent[c] for c in lat_ids]
            out.update({"latency_rate_clips_per_s": round(latency_rate, 2), "latency_clips": n,
                        "latency_p50_ms": round(1000 * percentile(lat, 50)),
                        "latency_p99_ms": round(1000 * percentile(lat, 99)),
                        "latency_batch_size_p50": percentile(sizes, 50) if sizes else 0.0,
                        "latency_batch_size_max": max(sizes, default=0.0),
                        "latency_worker_cpu_ms_per_clip": round(1000 * cpu_s / n, 1)})
        return out
    finally:
        producer.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def consume_only_cpu_ms(bootstrap: str, clips: list[bytes], work: Path) -> float:
    """CPU ms per message of the stream's consume stage timed alone: ``clips`` published to
    a fresh topic, then consumed by a worker whose runner answers at once
    (``deploy.benchmarks.consume_only``), in batches of ``max_batch`` as under load."""
    run = uuid.uuid4().hex[:6]
    topic = f"audio-clips-consume-{run}"
    _create_topic(bootstrap, topic)
    producer = _producer(bootstrap)
    try:
        for i, value in enumerate(clips):
            _send(producer, topic, f"consume-{run}-{i}", value)
        producer.flush()
    finally:
        producer.close()
    report, log_path = work / f"consume-{run}.txt", work / f"consume-{run}.log"
    env = {**os.environ, "SOUNDTAG_KAFKA_BOOTSTRAP": bootstrap, "SOUNDTAG_INPUT_TOPIC": topic,
           "SOUNDTAG_OUTPUT_TOPIC": f"audio-tags-consume-{run}", "SOUNDTAG_CONSUMER_GROUP": f"consume-{run}"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.benchmarks.consume_only", str(len(clips)), str(report)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not report.exists():  # written whole, by a rename
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the consume-only worker did not finish:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        answered, cpu_s = report.read_text().split()
        return 1000 * float(cpu_s) / int(answered)
    finally:
        stop(proc, grace_s=30)


@contextmanager
def dev_broker(work: Path) -> Iterator[tuple[str, int]]:
    """A tansu broker on a free port for the benchmark's lifetime: its bootstrap address and pid."""
    port = free_port()
    broker = start_broker(port, open(work / "tansu.log", "w"))
    try:
        time.sleep(1.0)
        yield f"127.0.0.1:{port}", broker.pid
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def run(quick: bool = False) -> dict:
    tagger, model_path = load_tagger()
    paths = real_clips(120 if quick else 1000)
    clips = [p.read_bytes() for p in paths]
    model_rate = 1 / time_model(tagger, model_windows(tagger, paths), with_features=True, repeats=5)
    del tagger  # the worker processes get the cores
    figures: dict = {"model_version_file": model_path.name, "partitions": PARTITIONS,
                     "model_clips_per_s_batch32_taps": round(model_rate, 2)}
    work = Path(tempfile.mkdtemp(prefix="soundtag-bench-stream-"))
    with dev_broker(work) as (bootstrap, broker_pid), scratch_postgres("soundtag_bench_stream") as url:
        main = run_stream_config(bootstrap, url, model_path, clips, None, work, broker_pid=broker_pid)
        figures.update({f"stream_{k}": v for k, v in main.items()})
        figures["stream_to_model_ratio"] = round(main["clips_per_s"] / model_rate, 3)
        few = clips[: 40 if quick else 300]
        lat = run_stream_config(bootstrap, url, model_path, few, main["clips_per_s"] / 2, work)
        figures.update({k: v for k, v in lat.items() if k.startswith("latency")})
        # Two workers sharing the partitions, the way a deployment scales out (`--scale
        # worker=N`), each on its share of the cores.
        cores = sorted(os.sched_getaffinity(0))
        halves = [set(cores[: max(1, len(cores) // 2)]), set(cores[len(cores) // 2 :] or cores)]
        two = run_stream_config(bootstrap, url, model_path, clips, None, work, workers=2, broker_pid=broker_pid,
                                worker_cpus=halves)
        figures.update({f"stream_2_workers_{k}": v for k, v in two.items()})
    figures["logs"] = str(work)
    return figures
