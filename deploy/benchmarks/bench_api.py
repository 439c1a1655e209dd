"""Issue 5 figures: the API with 100,000 clips in PostgreSQL.

The clips and their tags are bulk-loaded with COPY (what matters for query latency is the
row count and the indexes, not how the rows arrived); the API runs under uvicorn in its own
process, the client sends one request at a time over a kept-alive connection.

- `GET /api/clips/{id}` for random ids, and `GET /api/clips?label=…` (first page of 50,
  with and without a minimum confidence): p50 / p99 ms;
- `POST /inference` with a real 5 s clip: per-clip latency against the model-only time
  (forward pass with feature taps, batch 1) measured in this process in the same run.
"""

from __future__ import annotations

import base64
import os
import random
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from deploy.benchmarks.common import load_tagger, model_windows, percentile, real_clips, scratch_postgres, time_model
from deploy.processes import api_server


def _load_clips(url: str, n: int, labels: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        with conn.cursor().copy("COPY clips (id, source, sha256, sample_rate, channels, duration_s, status, "
                                "model_version, tagged_at) FROM STDIN") as copy:
            for cid in ids:
                copy.write_row((cid, f"bench/{cid}.ogg", cid * 2, 44100, 1, 5.0, "tagged", "bench", "2026-11-24"))
        with conn.cursor().copy("COPY tags (clip_id, rank, label, confidence) FROM STDIN") as copy:
            for cid in ids:
                conf = sorted((rng.random() for _ in range(3)), reverse=True)
                for rank, label in enumerate(rng.sample(labels, 3), start=1):
                    copy.write_row((cid, rank, label, conf[rank - 1]))
        conn.execute("ANALYZE")
    return ids


def _latencies(client: httpx.Client, urls: list[str]) -> list[float]:
    out = []
    for u in urls:
        t0 = time.perf_counter()
        r = client.get(u)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, (u, r.status_code, r.text[:200])
    return out


def _summary(name: str, lat: list[float]) -> dict:
    return {f"{name}_p50_ms": round(1000 * percentile(lat, 50), 2),
            f"{name}_p99_ms": round(1000 * percentile(lat, 99), 2), f"{name}_requests": len(lat)}


def run(quick: bool = False) -> dict:
    tagger, model_path = load_tagger()
    n = 5_000 if quick else 100_000
    clip_path = real_clips(1)[0]
    model_ms = 1000 * time_model(tagger, model_windows(tagger, [clip_path], count=1), with_features=True, repeats=10)
    labels = tagger.class_names
    del tagger
    figures: dict = {"clips_in_database": n, "model_ms_batch1_taps": round(model_ms, 2)}
    work = Path(tempfile.mkdtemp(prefix="soundtag-bench-api-"))
    with scratch_postgres("soundtag_bench_api") as url:
        t0 = time.perf_counter()
        ids = _load_clips(url, n, labels)
        figures["bulk_load_seconds"] = round(time.perf_counter() - t0, 1)
        env = {"SOUNDTAG_DATABASE_URL": url, "SOUNDTAG_MODEL_PATH": str(model_path),
               "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu"}
        env.pop("SOUNDTAG_API_KEY", None)
        os.environ.pop("SOUNDTAG_API_KEY", None)
        with api_server(env, work / "api.log") as base, httpx.Client(base_url=base, timeout=60) as client:
            rng = random.Random(1)
            one = [f"/api/clips/{rng.choice(ids)}" for _ in range(300 if quick else 2000)]
            _latencies(client, one[:50])  # warm-up: connection, plan cache
            figures.update(_summary("get_clip", _latencies(client, one)))
            by_label = [f"/api/clips?label={rng.choice(labels)}&limit=50" for _ in range(100 if quick else 500)]
            figures.update(_summary("label_query", _latencies(client, by_label)))
            by_conf = [f"/api/clips?label={rng.choice(labels)}&min_confidence=0.5&limit=50"
                       for _ in range(100 if quick else 500)]
            figures.update(_summary("label_min_conf_query", _latencies(client, by_conf)))
            # Next pages follow the cursor.
            page = client.get(f"/api/clips?label={labels[0]}&limit=50").json()
            later = []
            for _ in range(20 if quick else 100):
                if not page["next_cursor"]:
                    break
                t0 = time.perf_counter()
                page = client.get(f"/api/clips?label={labels[0]}&limit=50&cursor={page['next_cursor']}").json()
                later.append(time.perf_counter() - t0)
            figures.update(_summary("label_query_next_pages", later))

            body = {"data": base64.b64encode(clip_path.read_bytes()).decode()}
            client.post("/inference", json=body)
            inf = []
            for _ in range(5 if quick else 30):
                t0 = time.perf_counter()
                r = client.post("/inference", json=body)
                inf.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text[:300]
            figures.update(_summary("inference", inf))
            figures["inference_response_bytes"] = len(r.content)
            figures["inference_to_model_ratio"] = round(1000 * percentile(inf, 50) / model_ms, 2)
    return figures
