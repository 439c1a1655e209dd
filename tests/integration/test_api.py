"""Every route's happy path and its errors, against the real PostgreSQL."""

import base64
import struct

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.main import create_app
from tagger import db
from tagger.config import Settings
from tagger.features import window_starts
from tests.helpers import DEADLY, ENCODED_FORMATS, audio_bytes, deadly_decoder_path, encoded_bytes, wait_until

API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def settings(pg_url, random_checkpoint, untrained_allowed):
    return Settings(database_url=pg_url, model_path=random_checkpoint, device="cpu",
                    api_key=API_KEY, max_upload_bytes=2_000_000, max_duration_s=300.0)


@pytest.fixture(scope="module")
def client(settings, random_tagger):
    with db.get_engine(settings.database_url).begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    with TestClient(create_app(settings, random_tagger), raise_server_exceptions=False) as c:
        yield c


def _upload(client, files, key=API_KEY, **data):
    headers = {"X-API-Key": key} if key else {}
    return client.post("/api/clips", files=[("files", f) for f in files], headers=headers, data=data)


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"] == "ok"
    metrics = client.get("/metrics").text
    assert "soundtag_http_requests_total" in metrics


def test_upload_one_and_many_then_query(client):
    r = _upload(client, [("one.wav", audio_bytes("WAV", 2.0, seed=1))], clip_id="my-clip")
    assert r.status_code == 201, r.text
    item = r.json()["items"][0]
    assert item["clip_id"] == "my-clip" and item["source"] == "upload:one.wav" and item["status"] == "tagged"
    assert len(item["top3"]) == 3 and item["model_version"].startswith("untrained-")

    r = _upload(client, [("a.flac", audio_bytes("FLAC", 1.0, seed=2)), ("b.ogg", audio_bytes("OGG", 7.0, seed=3)),
                         ("bad.wav", b"not audio")])
    assert r.status_code == 201
    items = r.json()["items"]
    assert [i["status"] for i in items] == ["tagged", "tagged", "failed"]
    assert "not a readable" in items[2]["error"]

    one = client.get("/api/clips/my-clip").json()
    assert one["clip_id"] == "my-clip" and one["duration_s"] == pytest.approx(2.0, abs=0.01)
    label = one["top3"][0]["label"]
    listed = client.get("/api/clips", params={"label": label}).json()
    assert "my-clip" in [c["clip_id"] for c in listed["items"]]
    assert client.get("/api/clips", params={"label": label, "min_confidence": 1.0}).json()["items"] == []
    labels = client.get("/api/labels").json()["items"]
    assert len(labels) == 50 and any(c["label"] == label and c["top3"] >= 1 for c in labels)
    failed = client.get("/api/clips", params={"status": "failed"}).json()["items"]
    assert [c["source"] for c in failed] == ["upload:bad.wav"]


def test_pagination_walks_every_clip_once(client):
    for i in range(5):
        _upload(client, [(f"p{i}.wav", audio_bytes("WAV", 0.5, seed=100 + i))])
    everything = client.get("/api/clips", params={"limit": 500}).json()["items"]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/clips", params=params).json()
        seen += [c["clip_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [c["clip_id"] for c in everything] and len(seen) == len(set(seen))


def test_visualization_of_a_long_clip_has_a_timeline(client):
    r = _upload(client, [("long.ogg", audio_bytes("OGG", 12.0, seed=7))], clip_id="long-one")
    assert r.status_code == 201
    vis = client.get("/api/clips/long-one/visualization").json()
    assert vis["spectrogram"]["shape"][0] == 64 and vis["spectrogram"]["levels"] == 63
    raw = base64.b64decode(vis["spectrogram"]["data"])
    assert len(raw) == vis["spectrogram"]["shape"][0] * vis["spectrogram"]["shape"][1]
    assert set(vis["feature_maps"]) == {"stem", "stage1", "stage2", "stage3", "stage4"}
    assert len(vis["feature_maps"]["stage2"]["channels"]) == 4
    assert len(vis["timeline"]) == 4 and vis["timeline"][-1]["end_s"] == pytest.approx(12.0, abs=0.02)  # overlapping
    assert vis["waveform"]["shape"][0] == 2
    axes = vis["axes"]
    assert axes["feature_map_span_s"] == pytest.approx(12.0, abs=0.01)  # a long clip's maps cover the clip
    assert axes["frame_s"] == pytest.approx(512 / 44100) and (axes["f_min"], axes["f_max"]) == (20.0, 22050.0)


def test_an_upload_too_long_to_hold_is_streamed_and_its_pictures_stay_bounded(client):
    # Four minutes of Opus: decoded again from the upload's bytes, a window at a time.
    r = _upload(client, [("long.webm", encoded_bytes("webm", "libopus", 48000, seconds=240.0, seed=8))],
                clip_id="four-minutes")
    assert r.status_code == 201 and r.json()["items"][0]["status"] == "tagged"
    vis = client.get("/api/clips/four-minutes/visualization").json()
    frames = 1 + 240 * 44100 // 512
    assert len(vis["timeline"]) == len(window_starts(frames))
    assert vis["timeline"][-1]["end_s"] == pytest.approx(240.0, abs=0.05)
    columns = vis["spectrogram"]["shape"][1]
    assert columns == -(-frames // 6) and vis["axes"]["frame_s"] == pytest.approx(6 * 512 / 44100)
    assert vis["axes"]["feature_map_span_s"] == 60.0 and vis["waveform"]["shape"] == [2, 1000]


def test_a_short_clips_feature_maps_span_the_window_it_was_repeated_into(client):
    _upload(client, [("short.wav", audio_bytes("WAV", 1.0, seed=8))], clip_id="short-one")
    vis = client.get("/api/clips/short-one/visualization").json()
    assert vis["axes"]["feature_map_span_s"] == 5.0 and vis["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert vis["spectrogram"]["shape"][1] == 1 + 44100 // 512  # the clip's real length, no fill


def test_summary_counts_statuses_confidences_and_lists_failures(client):
    _upload(client, [("sum-good.wav", audio_bytes("WAV", 1.0, seed=9)), ("sum-bad.wav", b"RIFF....WAVEnot really")])
    summary = client.get("/api/summary").json()
    listed = client.get("/api/clips", params={"limit": 500}).json()["items"]
    by_status = {s: sum(c["status"] == s for c in listed) for s in ("tagged", "failed")}
    assert summary["status_counts"] == by_status
    assert summary["confidence_bins"][0] == 0.0 and summary["confidence_bins"][-1] == 1.0
    assert sum(summary["confidence_counts"]) == by_status["tagged"]
    tops = [c["top3"][0]["confidence"] for c in listed if c["status"] == "tagged"]
    assert summary["confidence_counts"][0] == sum(t < 0.1 for t in tops)
    failure = next(f for f in summary["failures"] if f["source"] == "upload:sum-bad.wav")
    assert failure["error"] and failure["clip_id"]
    assert len(client.get("/api/summary", params={"failures": 1}).json()["failures"]) == 1


def test_errors(client):
    assert client.get("/api/clips/nope").status_code == 404
    assert client.get("/api/clips/nope/visualization").status_code == 404
    assert client.get("/api/clips", params={"cursor": "!!!"}).status_code == 422
    assert client.get("/api/clips", params={"min_confidence": 2}).status_code == 422
    assert client.get("/api/clips", params={"limit": 0}).status_code == 422
    # the API key guards writes
    assert _upload(client, [("x.wav", audio_bytes())], key=None).status_code == 401
    assert _upload(client, [("x.wav", audio_bytes())], key="wrong").status_code == 401
    # nothing decodable: 422, and the failure is recorded
    r = _upload(client, [("empty.wav", b"")])
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    # over the duration limit (300 s here)
    r = _upload(client, [("long.wav", audio_bytes("WAV", 310.0, sr=2000))])
    assert r.status_code == 422 and "over the limit" in r.json()["detail"]
    # over the size limit (2 MB here): refused before it is read
    r = _upload(client, [("big.wav", b"\0" * 3_000_000)])
    assert r.status_code == 413
    assert _upload(client, [("a.wav", audio_bytes()), ("b.wav", audio_bytes())], clip_id="x").status_code == 422
    r = client.post("/api/clips", headers={"X-API-Key": API_KEY})
    assert r.status_code == 422
    for body in [{"data": "%%%"}, {"data": base64.b64encode(b"garbage").decode()}, {}, {"data": 5}]:
        r = client.post("/inference", json=body, headers={"X-API-Key": API_KEY})
        assert r.status_code == 422, body
        assert "Traceback" not in r.text


def test_inference_route_is_compatible_with_the_original(client):
    data = base64.b64encode(audio_bytes("WAV", 5.0, seed=11)).decode()
    r = client.post("/inference", json={"data": data}, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200
    body = r.json()
    assert [set(p) for p in body["predictions"]] == [{"class", "confidence"}] * 3
    assert body["input_spectrogram"]["shape"] == [64, 431]
    assert len(body["input_spectrogram"]["values"]) == 64
    # The original's layer names: conv1, layer1…4, and each residual block before and after its activation.
    blocks = {f"layer{n}.block{k}.{part}" for n in range(1, 5) for k in range(2) for part in ("conv", "relu")}
    assert set(body["visualization"]) == {"conv1", "layer1", "layer2", "layer3", "layer4"} | blocks
    assert body["visualization"]["layer2.block0.relu"]["shape"] == body["visualization"]["layer2"]["shape"]
    assert body["waveform"]["sample_rate"] == 44100 and body["waveform"]["duration"] == pytest.approx(5.0)
    assert 8000 <= len(body["waveform"]["values"]) < 16000  # every (n // 8000)-th sample, as the original


def test_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "soundtag" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/clips", "/api/clips/{clip_id}", "/api/labels", "/inference", "/readyz"} <= set(schema["paths"])


def test_readyz_reports_a_missing_model(settings, tmp_path):
    broken = settings.model_copy(update={"model_path": tmp_path / "missing.safetensors"})
    with TestClient(create_app(broken)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "SOUNDTAG_MODEL_PATH" in r.json()["checks"]["model"]
        assert c.post("/api/clips", files=[("files", ("a.wav", audio_bytes()))],
                      headers={"X-API-Key": API_KEY}).status_code == 503


def test_inference_needs_the_api_key_when_one_is_set(client):
    body = {"data": base64.b64encode(audio_bytes("WAV", 1.0)).decode()}
    assert client.post("/inference", json=body).status_code == 401
    assert client.post("/inference", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/inference", json=body, headers={"X-API-Key": API_KEY}).status_code == 200


def test_inference_spectrogram_has_the_clips_real_length(client):
    data = base64.b64encode(audio_bytes("WAV", 1.0, seed=9)).decode()
    body = client.post("/inference", json={"data": data}, headers={"X-API-Key": API_KEY}).json()
    assert body["input_spectrogram"]["shape"] == [64, 1 + 44100 // 512]
    assert body["waveform"]["duration"] == pytest.approx(1.0)


def test_inference_accepts_base64_with_line_breaks(client):
    raw = base64.b64encode(audio_bytes("WAV", 1.0, seed=4)).decode()
    wrapped = "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)) + "\n"  # what `base64` writes
    r = client.post("/inference", json={"data": wrapped}, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("request_args", [
    ("/api/clips", {"label": "dog\x00"}),
    ("/api/clips", {"cursor": "\x00"}),
    ("/api/clips", {"label": "a\x1bb"}),
    ("/api/clips/abc%00def", {}),
    ("/api/clips/abc%00def/visualization", {}),
])
def test_control_characters_in_text_inputs_are_422(client, request_args):
    path, params = request_args
    r = client.get(path, params=params)
    assert r.status_code == 422 and "control character" in r.json()["detail"]


def test_control_characters_in_upload_names_and_ids_are_422(client):
    boundary = "soundtagboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"bad\x00name.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + audio_bytes() + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/api/clips", content=body, headers={
        "X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422 and "control characters" in r.json()["detail"]
    r = _upload(client, [("ok.wav", audio_bytes())], clip_id="a\x00b")
    assert r.status_code == 422 and "control characters" in r.json()["detail"]


def test_chunked_upload_over_the_limit_is_413(client):
    boundary = "soundtagboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()

    def chunks():  # no Content-Length: the body streams in chunks
        yield head
        for _ in range(40):
            yield b"\0" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/clips", content=chunks(), headers={
        "X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text


def test_an_existing_clip_id_is_not_overwritten_silently(client):
    first = audio_bytes("WAV", 1.0, seed=21)
    assert _upload(client, [("a.wav", first)], clip_id="keep-me").status_code == 201
    assert _upload(client, [("a.wav", first)], clip_id="keep-me").status_code == 201  # same audio: idempotent
    r = _upload(client, [("b.wav", audio_bytes("WAV", 1.0, seed=22))], clip_id="keep-me")
    assert r.status_code == 409 and "replace=true" in r.json()["detail"]
    assert client.get("/api/clips/keep-me").json()["source"] == "upload:a.wav"
    r = _upload(client, [("b.wav", audio_bytes("WAV", 1.0, seed=22))], clip_id="keep-me", replace="true")
    assert r.status_code == 201
    assert client.get("/api/clips/keep-me").json()["source"] == "upload:b.wav"


@pytest.mark.parametrize("name", list(ENCODED_FORMATS))
def test_compressed_uploads_are_tagged(client, name):
    r = _upload(client, [(f"clip.{name}", encoded_bytes(*ENCODED_FORMATS[name], seconds=1.5, seed=5))])
    assert r.status_code == 201 and r.json()["items"][0]["status"] == "tagged", r.text


def test_odd_rates_and_lying_files_are_answered_not_crashed(client):
    r = _upload(client, [("odd.wav", audio_bytes("WAV", 2.0, sr=44099, seed=6))])
    assert r.status_code == 201 and r.json()["items"][0]["sample_rate"] == 44099
    truncated = audio_bytes("WAV", 1.0, seed=7)[: 44 + 264]
    r = _upload(client, [("cut.wav", truncated)])
    assert r.status_code == 422 and "truncated: header 1.00 s" in r.json()["detail"]
    one_hz = bytearray(audio_bytes("WAV", 1.0, sr=8000, seed=8))
    one_hz[24:28] = struct.pack("<I", 1)
    r = _upload(client, [("slow.wav", bytes(one_hz))])
    assert r.status_code == 422 and "sample rate 1 Hz" in r.json()["detail"]


def test_cors_lets_a_configured_origin_call_inference(settings, random_tagger):
    origin = "http://localhost:3000"
    body = {"data": base64.b64encode(audio_bytes("WAV", 1.0, seed=12)).decode()}
    allowed = settings.model_copy(update={"cors_origins": f"{origin}, https://other.example"})
    with TestClient(create_app(allowed, random_tagger)) as c:
        pre = c.options("/inference", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "content-type,x-api-key"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        r = c.post("/inference", json=body, headers={"Origin": origin, "X-API-Key": API_KEY})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        refused = c.post("/inference", json=body, headers={"Origin": "https://evil.example", "X-API-Key": API_KEY})
        assert "access-control-allow-origin" not in refused.headers
    with TestClient(create_app(settings, random_tagger)) as c:  # default: no origin is allowed
        pre = c.options("/inference", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_an_upload_that_kills_its_tagging_process_costs_that_request_not_the_server(
        settings, random_tagger, tmp_path, monkeypatch):
    # The app's pool processes start with a decoder that dies on DEADLY… bytes.
    monkeypatch.setenv("PYTHONPATH", deadly_decoder_path(tmp_path / "hooks"))
    with TestClient(create_app(settings, random_tagger)) as c:
        r = _upload(c, [("crash.wav", DEADLY + audio_bytes("WAV", 1.0, seed=77), "audio/wav")])
        assert r.status_code == 422
        assert "the tagging process died on this clip (exit code 3)" in r.json()["detail"]
        again = _upload(c, [("fine.wav", audio_bytes("WAV", 1.0, seed=78), "audio/wav")])
        assert again.status_code == 201 and again.json()["items"][0]["status"] == "tagged"
        crashed = c.post("/inference", json={"data": base64.b64encode(DEADLY + audio_bytes("WAV", 1.0)).decode()},
                         headers={"X-API-Key": API_KEY})
        assert crashed.status_code == 422 and "died" in crashed.json()["detail"]
        assert c.get("/readyz").json()["status"] == "ready"


def _wav(samples) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, np.asarray(samples, dtype="float32"), 44100, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_verdicts_are_stored_filtered_and_counted(client):
    import numpy as np

    silent = _upload(client, [("quiet.wav", _wav(np.zeros(44100 * 2)))], clip_id="quiet-one")
    assert silent.status_code == 201 and silent.json()["items"][0]["verdict"] == "silence"
    loud = _upload(client, [("loud.wav", audio_bytes("WAV", 2.0, seed=41))], clip_id="loud-one").json()["items"][0]
    assert loud["verdict"] in ("label", "unknown") and len(loud["top3"]) == 3
    assert client.get("/api/clips/quiet-one").json()["verdict"] == "silence"
    listed = [c["clip_id"] for c in client.get("/api/clips", params={"verdict": "silence"}).json()["items"]]
    assert "quiet-one" in listed and "loud-one" not in listed
    assert client.get("/api/clips", params={"verdict": "maybe"}).status_code == 422
    counts = client.get("/api/summary").json()["verdict_counts"]
    assert set(counts) == {"label", "unknown", "silence"} and counts["silence"] >= 1


def test_events_of_a_long_clip_in_every_format(client):
    import numpy as np

    x = np.zeros(44100 * 15, np.float32)
    x[int(44100 * 6.2) : int(44100 * 9.4)] = np.random.default_rng(3).standard_normal(int(44100 * 3.2)) * 0.3
    assert _upload(client, [("long.wav", _wav(x))], clip_id="long/one \"quoted\"").status_code == 201
    url = "/api/clips/long/one \"quoted\"/events"
    events = client.get(url).json()["items"]
    assert events and all(6.1 <= e["start_s"] < e["end_s"] <= 9.5 for e in events)
    assert {"start_s", "end_s", "label", "confidence"} == set(events[0])
    vis = client.get("/api/clips/long/one \"quoted\"/visualization").json()
    assert vis["events"] == events and {w["verdict"] for w in vis["timeline"]} >= {"silence"}
    csv = client.get(url, params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0] == "start_s,end_s,label,confidence" and len(lines) == 1 + len(events)
    assert 'filename="one_quoted_.csv"' in csv.headers["content-disposition"]
    audacity = client.get(url, params={"format": "audacity"}).text.splitlines()
    assert len(audacity) == len(events) and audacity[0].split("\t")[2] == events[0]["label"]
    raven = client.get(url, params={"format": "raven"}).text.splitlines()
    assert raven[0].startswith("Selection\tView\tChannel\tBegin Time (s)") and len(raven) == 1 + len(events)
    assert client.get(url, params={"format": "xml"}).status_code == 422
    assert client.get("/api/clips/nope/events").status_code == 404
    _upload(client, [("junk.wav", b"not audio")], clip_id="junk-one")
    assert client.get("/api/clips/junk-one/events").status_code == 404


def _similar_ready(client, clip_id, **params):
    def answer():
        r = client.get(f"/api/clips/{clip_id}/similar", params=params)
        return r if r.status_code == 200 else None

    return wait_until(answer, 30, f"{clip_id} to be found by similarity")


def test_sounds_like_this_one_from_a_stored_clip_and_from_a_file(client):
    for i in range(6):
        r = _upload(client, [(f"s{i}.wav", audio_bytes("WAV", 2.0, seed=40 + i))], clip_id=f"sim-{i}")
        assert r.status_code == 201
    r = _similar_ready(client, "sim-5", k=3)  # a new clip is found within seconds
    items = r.json()["items"]
    assert len(items) == 3 and "sim-5" not in [i["clip_id"] for i in items]
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert all({"clip_id", "score", "source", "top3", "verdict"} <= set(i) for i in items)
    label = items[0]["top3"][0]["label"]
    filtered = client.get("/api/clips/sim-5/similar", params={"k": 50, "label": label}).json()["items"]
    assert filtered and all(label in [t["label"] for t in i["top3"]] for i in filtered)
    assert client.get("/api/clips/sim-5/similar", params={"verdict": "silence"}).json()["items"] == []
    # The file itself, searched with: the stored copy comes first, nothing new is stored.
    before = client.get("/api/summary").json()
    found = client.post("/api/search", params={"k": 2}, files={"file": ("q.wav", audio_bytes("WAV", 2.0, seed=45))},
                        headers={"X-API-Key": API_KEY})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["items"][0]["clip_id"] == "sim-5" and body["items"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len(body["top3"]) == 3 and body["verdict"] in ("label", "unknown", "silence")
    assert client.get("/api/summary").json()["status_counts"] == before["status_counts"]


def test_similar_and_search_refuse_what_they_cannot_answer(client):
    assert client.get("/api/clips/no-such-clip/similar").status_code == 404
    _upload(client, [("bad.wav", b"RIFF not really")], clip_id="sim-failed")
    r = client.get("/api/clips/sim-failed/similar")
    assert r.status_code == 409 and "tag it again" in r.json()["detail"]
    assert client.get("/api/clips/sim-failed/similar", params={"k": 0}).status_code == 422
    assert client.get("/api/clips/sim-failed/similar", params={"k": 101}).status_code == 422
    headers = {"X-API-Key": API_KEY}
    bad = client.post("/api/search", files={"file": ("x.wav", b"not audio at all")}, headers=headers)
    assert bad.status_code == 422 and "x.wav" in bad.json()["detail"]
    assert client.post("/api/search", files={"file": ("x.wav", b"\0" * 3_000_000)}, headers=headers).status_code == 413
    assert client.post("/api/search", files={"file": ("x.wav", audio_bytes())}).status_code == 401


def test_reads_survive_the_database_dropping_their_connections(client, settings):
    """The read engines skip the ping at checkout: after the database drops every
    connection (a restart, a failover), the next reads are run again, not answered 503."""
    r = _upload(client, [("drop.wav", audio_bytes("WAV", 1.0, seed=41))], clip_id="dropped-connection")
    assert r.status_code == 201, r.text
    for _ in range(3):  # every pooled read connection is in use at least once
        assert client.get("/api/clips/dropped-connection").status_code == 200
        assert client.get("/api/clips?limit=5").status_code == 200
        assert client.get("/api/clips/dropped-connection/visualization").status_code == 200
    name = settings.database_url.rsplit("/", 1)[-1]
    with db.get_engine(settings.database_url).connect() as conn:
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name}).scalar()
    assert killed >= 2
    assert client.get("/api/clips/dropped-connection").json()["clip_id"] == "dropped-connection"
    assert client.get("/api/clips?limit=5").status_code == 200
    assert client.get("/api/clips/dropped-connection/visualization").status_code == 200
