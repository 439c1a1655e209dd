"""Issue 48.5: the query API under load, measured with wrk at 20 connections.

100,000 clips with tags and embeddings (`bench_similar`'s synthetic ones) are bulk-loaded into PostgreSQL on the same
machine (`bench_api`'s loader, plus one clip_features row each, so the similarity index has
something to search). The API runs under `soundtag serve --workers N` (one process, and one per core); wrk
(Debian's) sends requests for random ids and labels from 2 threads over 20 kept-alive
connections for ``DURATION_S`` seconds per route, and prints requests/s and latency
percentiles. A route without the database (`/healthz`) in the same run is the ceiling the
HTTP stack allows on this CPU: each route's rate is also given as a share of it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from deploy.benchmarks.bench_api import _load_clips
from deploy.benchmarks.bench_similar import clustered
from deploy.benchmarks.common import load_tagger, scratch_postgres
from deploy.processes import api_server
from tagger.codec import encode_embedding

CONNECTIONS = 20
WRK_THREADS = 2
DURATION_S = 10
WORKERS = (1, 2)  # API processes: one, and one per core

_LUA = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def _load_embeddings(url: str, ids: list[str], model_version: str) -> None:
    vectors = clustered(len(ids), seed=3)
    start = datetime(2026, 11, 24, tzinfo=UTC)
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        with conn.cursor().copy("COPY clip_features (clip_id, codec_version, spectrogram, feature_maps, waveform, "
                                "embedding) FROM STDIN") as copy:
            for cid, vector in zip(ids, vectors, strict=True):
                copy.write_row((cid, 1, b"", b"", b"", encode_embedding(vector.astype(np.float32))))
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE stamps (id text, t timestamptz)")
            with cur.copy("COPY stamps (id, t) FROM STDIN") as copy:
                for i, cid in enumerate(ids):
                    copy.write_row((cid, start + timedelta(milliseconds=i)))
            cur.execute("UPDATE clips SET model_version = %s, tagged_at = stamps.t FROM stamps "
                        "WHERE clips.id = stamps.id", (model_version,))
        conn.execute("ANALYZE")


def wrk(base: str, paths: list[str], work: Path, duration_s: int) -> dict:
    """requests/s, p50/p99 ms and non-2xx answers of wrk over these paths."""
    paths_file, script = work / "paths.txt", work / "random.lua"
    paths_file.write_text("\n".join(paths) + "\n")
    script.write_text(_LUA)
    out = subprocess.run(["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency",
                          "-s", str(script), base], env={**os.environ, "WRK_PATHS": str(paths_file)},
                         capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    figures: dict[str, Any] = {"rps": round(float(rate.group(1)))}
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if found is not None:
            value, unit = found.groups()
            figures[f"p{pct}_ms"] = round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 2)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    figures["non_2xx"] = int(bad.group(1)) if bad else 0
    if errors:
        figures["socket_errors"] = errors.group(1)
    return figures


def run(quick: bool = False) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("the load suite needs wrk: apt-get install wrk")
    tagger, model_path = load_tagger()
    labels, version = tagger.class_names, tagger.version
    del tagger
    n = 5_000 if quick else 100_000
    duration_s = 3 if quick else DURATION_S
    figures: dict = {"clips_in_database": n, "connections": CONNECTIONS, "wrk_threads": WRK_THREADS,
                     "seconds_per_route": duration_s}
    work = Path(tempfile.mkdtemp(prefix="soundtag-bench-load-"))
    rng = random.Random(1)
    with scratch_postgres("soundtag_bench_load") as url:
        ids = _load_clips(url, n, labels)
        _load_embeddings(url, ids, version)
        routes = {
            "healthz": ["/healthz"],
            "by_id": [f"/api/clips/{rng.choice(ids)}" for _ in range(5000)],
            "by_label": [f"/api/clips?label={rng.choice(labels)}&limit=50" for _ in range(500)],
            "by_label_min_conf": [f"/api/clips?label={rng.choice(labels)}&min_confidence=0.5&limit=50"
                                  for _ in range(500)],
            "similar": [f"/api/clips/{rng.choice(ids)}/similar?k=10" for _ in range(5000)],
        }
        env = {"SOUNDTAG_DATABASE_URL": url, "SOUNDTAG_MODEL_PATH": str(model_path),
               "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu"}
        os.environ.pop("SOUNDTAG_API_KEY", None)
        for workers in (WORKERS[:1] if quick else WORKERS):
            with api_server(env, work / f"api-{workers}.log", workers=workers) as base:
                _wait_for_index(base, ids[-1], workers)
                for name, paths in routes.items():
                    wrk(base, paths[:50], work, 1)  # warm-up: connections, plan caches
                    result = wrk(base, paths, work, duration_s)
                    for key, value in result.items():
                        figures[f"workers{workers}_{name}_{key}"] = value
                    if name != "healthz":
                        figures[f"workers{workers}_{name}_share_of_healthz"] = round(
                            result["rps"] / figures[f"workers{workers}_healthz_rps"], 2)
    return figures


def _wait_for_index(base: str, clip_id: str, workers: int, timeout_s: float = 600) -> None:
    """Every API process has read the embeddings: the last clip is found from each (a
    request lands on any process, so ask until several answers in a row are 200)."""
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        while in_a_row < 10 * workers:
            if time.monotonic() > deadline:
                raise SystemExit("the similarity index did not load in time")
            ok = client.get(f"/api/clips/{clip_id}/similar?k=1").status_code == 200
            in_a_row = in_a_row + 1 if ok else 0
            if not ok:
                time.sleep(0.5)
