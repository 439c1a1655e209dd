"""Labels of your own on the real PostgreSQL: `soundtag teach` from folders, every stored and
new clip labelled, the API's list / teach-from-clips / delete, and the refusals."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from api.main import create_app
from tagger.config import Settings
from tests.helpers import migrated_database

KEY = "label-key"


def _sound(kind: str, seed: int) -> np.ndarray:
    """Three kinds of sound a random network's embedding tells apart: low hums, high
    whistles and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(2.0 * 16000)) / 16000
    if kind == "low":
        x = np.sin(2 * np.pi * rng.uniform(80, 160) * t)
    elif kind == "high":
        x = np.sin(2 * np.pi * rng.uniform(5000, 7000) * t)
    else:
        x = rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            kind = "noise" if label == "background" else label
            sf.write(root / label / f"{label}{i}.wav", _sound(kind, seed + 100 * i + len(label)), 16000)
    return root


@pytest.fixture(scope="module")
def labels_db():
    with migrated_database("soundtag_labels") as (_, url):
        yield url


@pytest.fixture(scope="module")
def env(labels_db, random_checkpoint):
    return {**os.environ, "SOUNDTAG_DATABASE_URL": labels_db, "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
            "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu"}


def _soundtag(env, *args):
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def client(labels_db, random_checkpoint, random_tagger, untrained_allowed):
    settings = Settings(database_url=labels_db, model_path=random_checkpoint, device="cpu", api_key=KEY)
    with TestClient(create_app(settings, random_tagger), raise_server_exceptions=False) as c:
        yield c


def test_teach_from_folders_labels_stored_and_new_clips(tmp_path, env, client):
    stored = tmp_path / "stored"
    stored.mkdir()
    for i, kind in enumerate(["low", "high", "noise"]):
        sf.write(stored / f"{kind}.wav", _sound(kind, 900 + i), 16000)
    assert _soundtag(env, "ingest", str(stored), "--quiet").returncode == 0

    done = _soundtag(env, "teach", str(_folder(tmp_path / "teach", {"low": 8, "high": 8, "background": 8})),
                     "--name", "pitch", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "label set 'pitch' version 1" in done.stdout and "3 stored clips labelled" in done.stdout
    assert "8 examples; 20 or more make a steadier label" in done.stderr  # taught, with a warning
    for label in ("low", "high", "background"):
        assert f"  {label}" in done.stdout

    clips = {c["source"].rsplit("/", 1)[-1]: c for c in client.get("/api/clips").json()["items"]}
    custom = {name: c["custom"] for name, c in clips.items()}
    assert all(len(v) == 1 and v[0]["label_set"] == "pitch" for v in custom.values())
    assert custom["low.wav"][0]["label"] == "low" and custom["high.wav"][0]["label"] == "high"
    assert custom["noise.wav"][0]["label"] == "unknown"  # background: none of these

    # A clip tagged after the set exists gets its label as it is stored (here, an upload).
    up = client.post("/api/clips", files=[("files", ("later.wav", _wav_bytes(_sound("high", 777))))],
                     headers={"X-API-Key": KEY})
    assert up.status_code == 201 and up.json()["items"][0]["custom"][0]["label"] == "high"

    sets = client.get("/api/label-sets").json()["items"]
    assert [(s["name"], s["version"], s["labels"]) for s in sets] == [("pitch", 1, ["high", "low"])]
    assert sets[0]["examples"] == {"low": 8, "high": 8, "background": 8}
    assert set(sets[0]["cv_accuracy_by_label"]) == {"low", "high", "background"}  # (a random network's embedding)

    # Taught again: a new version, every clip labelled by it.
    again = _soundtag(env, "teach", str(_folder(tmp_path / "again", {"low": 6, "high": 6}, seed=5)), "--name",
                      "pitch", "--quiet")
    assert again.returncode == 0 and "version 2" in again.stdout
    assert client.get("/api/label-sets").json()["items"][0]["version"] == 2


def test_too_few_examples_are_refused_with_the_reason(tmp_path, env):
    few = _soundtag(env, "teach", str(_folder(tmp_path / "few", {"low": 4, "high": 7})), "--name", "few")
    assert few.returncode == 2 and "at least 5 examples" in few.stderr and "low (4)" in few.stderr
    lonely = _soundtag(env, "teach", str(_folder(tmp_path / "one", {"low": 6})), "--name", "one")
    assert lonely.returncode == 2 and "one label alone" in lonely.stderr
    assert _soundtag(env, "teach", str(tmp_path / "nowhere"), "--name", "x").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _soundtag(env, "teach", str(empty), "--name", "x")
    assert nothing.returncode == 2 and "one subfolder per label" in nothing.stderr


def test_label_the_selected_clips_teaches_from_stored_embeddings_then_delete(tmp_path, client):
    ids = {}
    for kind in ("low", "high"):
        for i in range(5):
            r = client.post("/api/clips", data={"clip_id": f"sel-{kind}-{i}"},
                            files=[("files", (f"{kind}{i}.wav", _wav_bytes(_sound(kind, 300 + i))))],
                            headers={"X-API-Key": KEY})
            assert r.status_code == 201
        ids[kind] = [f"sel-{kind}-{i}" for i in range(5)]
    headers = {"X-API-Key": KEY}
    first = client.post("/api/label-sets/picked/examples", json={"label": "low", "clip_ids": ids["low"][:3]},
                        headers=headers)
    assert first.status_code == 422 and "examples saved" in first.json()["detail"]
    client.post("/api/label-sets/picked/examples", json={"label": "low", "clip_ids": ids["low"][3:]}, headers=headers)
    taught = client.post("/api/label-sets/picked/examples", json={"label": "high", "clip_ids": ids["high"]},
                         headers=headers)
    assert taught.status_code == 200, taught.text
    assert taught.json()["examples"] == {"high": 5, "low": 5} and taught.json()["version"] == 1
    clip = client.get("/api/clips/sel-high-0").json()
    assert any(c["label_set"] == "picked" and c["label"] == "high" for c in clip["custom"])
    bad = client.post("/api/label-sets/picked/examples", json={"label": "x", "clip_ids": ["no-such"]}, headers=headers)
    assert bad.status_code == 422 and "not tagged" in bad.json()["detail"]
    unkeyed = client.post("/api/label-sets/picked/examples", json={"label": "x", "clip_ids": ids["low"]})
    assert unkeyed.status_code == 401
    assert client.delete("/api/label-sets/picked", headers=headers).status_code == 204
    assert client.delete("/api/label-sets/picked", headers=headers).status_code == 404
    assert all(c["label_set"] != "picked" for c in client.get("/api/clips/sel-high-0").json()["custom"])


def _wav_bytes(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV")
    return buf.getvalue()
