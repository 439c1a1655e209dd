"""The page in real headless Chromium (Debian's), driven by Playwright, against the real
API (uvicorn) and the real PostgreSQL."""

import base64
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import text

from deploy.processes import api_server, free_port
from tagger import db
from tests.helpers import REPO, audio_bytes, wait_until

pytestmark = pytest.mark.browser
OUT = REPO / "test-output"
SAMPLES = REPO / "tagger" / "assets" / "samples"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"]
XSS_NAME = "<script>alert(1)</script>.wav"
PHONE = {"width": 390, "height": 844}
FRAMES_PER_S = 44100 / 512


# -------------------------------------------------------------------- fixtures ---
class _StaticPages:
    """A plain HTTP server on its own port: a page of another origin."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None  # type: ignore[method-assign]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def other_origins(tmp_path_factory):
    root = tmp_path_factory.mktemp("other-origin")
    (root / "front.html").write_text(CROSS_ORIGIN_PAGE)
    allowed, refused = _StaticPages(root), _StaticPages(root)
    yield allowed, refused
    allowed.close()
    refused.close()


@pytest.fixture(scope="module")
def env(pg_url, random_checkpoint, other_origins):
    return {"SOUNDTAG_DATABASE_URL": pg_url, "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
            "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu",
            "SOUNDTAG_CORS_ORIGINS": other_origins[0].url}


@pytest.fixture(scope="module")
def server(env, pg_url, tmp_path_factory):
    with db.get_engine(pg_url).begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    with api_server(env, tmp_path_factory.mktemp("logs") / "api.log") as url:
        yield url


def _launch(p, extra_args=()):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)")
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args])


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = _launch(playwright)
    yield b
    b.close()


@pytest.fixture
def page(browser):
    """A desktop-sized page that fails the test on any script error or dialog."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 1000})
    pg = ctx.new_page()
    pg.errors, pg.dialogs = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    assert pg.errors == [], pg.errors
    assert pg.dialogs == [], "a script from a file name ran"
    ctx.close()


# --------------------------------------------------------------------- helpers ---
def _nonblank(page, selector: str) -> list[bool]:
    return page.eval_on_selector_all(selector, """cs => cs.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]); hi = Math.max(hi, d[i + 1]); }
        return c.width > 0 && hi - lo > 10;  // more than one colour drawn
    })""")


def _noisy_wav(seconds: float, seed: int) -> bytes:
    """Noise bursts over a tone: every part of it has something to draw."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 44100)) / 44100
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), 44100, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _drop_files(page, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files on the drop zone as a person dragging them from the desktop would."""
    data = [{"name": n, "b64": base64.b64encode(b).decode(), "type": t} for n, b, t in files]
    transfer = page.evaluate_handle("""files => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, { type: f.type }));
        }
        return dt;
    }""", data)
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def _wait_uploads_settled(page, n: int) -> list[dict]:
    page.wait_for_function(f"""() => {{
        const rows = [...document.querySelectorAll('#uploads .upload-row')];
        return rows.length >= {n} && rows.slice(0, {n}).every(r => ['tagged', 'failed'].includes(r.dataset.state));
    }}""", timeout=90_000)
    return page.eval_on_selector_all("#uploads .upload-row", """rs => rs.map(r => ({
        name: r.querySelector('.name').textContent, state: r.dataset.state,
        result: r.querySelector('.result').textContent, clip: r.dataset.clipId || null }))""")[:n]


def _upload(page, name: str, data: bytes, mime: str = "audio/wav") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.wait_for_function("name => [...document.querySelectorAll('#clip-view[data-loaded]')].length && "
                           "document.querySelector('#clip-source').textContent === 'upload:' + name",
                           arg=name, timeout=60_000)


def _no_horizontal_overflow(page) -> None:
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e => {
        const r = e.getBoundingClientRect(); return r.width > 0 && r.right > document.documentElement.clientWidth + 1
            && !e.closest('.table-wrap'); }).map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 5)""")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], wide
    assert wide == []


# ----------------------------------------------------------------------- tests ---
def test_upload_view_permalink_filter_and_no_script_injection(server, page, browser):
    OUT.mkdir(exist_ok=True)
    page.goto(server + "/")
    _upload(page, XSS_NAME, audio_bytes("OGG", 12.0, seed=5), "audio/ogg")

    assert page.locator("#top3 .row").count() == 3
    assert page.locator("#clip-source").text_content() == f"upload:{XSS_NAME}"  # shown as text
    assert all(_nonblank(page, "canvas.heatmap")), "a heatmap is blank"
    assert page.locator("canvas.fmap").count() == 5 * 5  # 5 taps × (mean + 4 channels)
    assert _nonblank(page, "#waveform") == [True]
    # 12 s: windows overlapping by half, the last ending at 12 s
    assert page.locator("#timeline-plot .win").count() == 4
    page.screenshot(path=str(OUT / "page-upload.png"), full_page=True)

    # the clip table shows the name as text too
    page.wait_for_function("document.querySelectorAll('#clip-table tbody tr').length >= 1")
    assert XSS_NAME in page.locator("#clip-table tbody").inner_text()
    assert page.locator("#clip-table script").count() == 0 and page.locator("#clip-view script").count() == 0

    # permalink: a fresh page shows the clip and says it has no audio to play
    clip_id = page.locator("#clip-id").text_content()
    fresh = browser.new_page()
    fresh.goto(server + "/?clip=" + clip_id)
    fresh.wait_for_selector("#clip-view[data-loaded]", timeout=30_000)
    assert fresh.locator("#clip-id").text_content() == clip_id
    assert all(_nonblank(fresh, "canvas.heatmap"))
    assert fresh.locator("#audio-note").is_visible() and not fresh.locator("#player").is_visible()
    fresh.close()

    # filter by label: the clip's top label finds it, another label does not
    top_label = page.locator("#top3 .row .label").first.text_content()
    page.select_option("#label-filter", top_label)
    page.click("#filter button")
    page.wait_for_function(
        "id => [...document.querySelectorAll('#clip-table tbody tr')].some(r => r.dataset.clipId === id)", arg=clip_id)
    shown = [t.text_content() for t in page.locator("#top3 .label").all()]
    other = next(o for o in page.eval_on_selector_all("#label-filter option", "os => os.map(o => o.value)")
                 if o and o not in shown)
    page.select_option("#label-filter", other)
    page.click("#filter button")
    page.wait_for_function("document.querySelectorAll('#clip-table tbody tr').length === 0")


def test_a_7_s_clip_has_a_7_s_time_axis_plays_and_seeks(server, page):
    page.goto(server + "/")
    _upload(page, "seven.wav", _noisy_wav(7.0, seed=11))

    # axes: seconds along every picture, Hz up the spectrogram, nothing drawn past 7 s
    assert page.locator("#spectrogram").evaluate("c => c.width") == 1 + 7 * 44100 // 512
    for plot in ("#wave-plot", "#spectro-plot"):
        axis = page.locator(f"{plot} .x-axis")
        assert float(axis.get_attribute("data-seconds")) == pytest.approx(7.0, abs=0.01)
        assert axis.locator(".tick").all_text_contents()[-1] == "7 s"
    hz = page.locator("#spectro-plot .y-axis .tick").all_text_contents()
    assert hz[0] == "100" and "1k" in hz and hz[-1] == "20k"
    assert page.locator("#spectro-plot .colourbar .unit").text_content() == "dB"
    fmap_axes = page.eval_on_selector_all("#feature-maps .x-axis", "as => as.map(a => +a.dataset.seconds)")
    assert len(fmap_axes) == 25 and all(s == pytest.approx(7.0, abs=0.01) for s in fmap_axes)
    assert page.locator("#feature-maps .hbar").count() == 25  # a colour bar with its range under every map

    # playback: the audio plays, the playheads move
    assert page.locator("#player").is_visible() and not page.locator("#audio-note").is_visible()
    page.evaluate("document.getElementById('player').play()")
    page.wait_for_function("document.getElementById('player').currentTime > 0.8", timeout=15_000)
    page.evaluate("document.getElementById('player').pause()")
    t = page.evaluate("document.getElementById('player').currentTime")
    left = page.locator("#spectro-plot .playhead").evaluate("h => parseFloat(h.style.left)")
    assert left == pytest.approx(t / 7 * 100, abs=3) and left > 5
    page.screenshot(path=str(OUT / "page-playing.png"), full_page=False)

    # a click three quarters along the spectrogram seeks to 5.25 s; so does the waveform
    box = page.locator("#spectrogram").bounding_box()
    page.locator("#spectrogram").click(position={"x": 0.75 * box["width"], "y": box["height"] / 2})
    assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(5.25, abs=0.1)
    assert page.locator("#wave-plot .playhead").evaluate("h => parseFloat(h.style.left)") == pytest.approx(75, abs=1.5)
    box = page.locator("#waveform").bounding_box()
    page.locator("#waveform").click(position={"x": 0.25 * box["width"], "y": 10})
    assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(1.75, abs=0.1)

    # and from the keyboard
    page.focus("#spectro-plot .track")
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(0.5, abs=0.05)
    page.keyboard.press("End")
    assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(7.0, abs=0.05)


def test_a_short_clip_draws_only_itself(server, page):
    page.goto(server + "/")
    _upload(page, "one-second.wav", _noisy_wav(1.0, seed=12))
    assert page.locator("#spectrogram").evaluate("c => c.width") == 1 + 44100 // 512
    widths = page.eval_on_selector_all("#feature-maps canvas", "cs => cs.map(c => c.width)")
    clip_id = page.locator("#clip-id").text_content()
    stem = httpx.get(f"{server}/api/clips/{clip_id}/visualization").json()["feature_maps"]["stem"]["mean"]["shape"]
    assert widths[0] == round(stem[1] / 5)  # the maps span the 5 s window: only its first fifth is the clip
    assert "repeated to fill" in page.locator("#fmap-note").text_content()


def test_drag_and_drop_three_files_one_broken(server, page):
    page.goto(server + "/")
    _drop_files(page, [("first.wav", _noisy_wav(2.0, seed=21), "audio/wav"),
                       ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEthis is not audio", "audio/wav"),
                       ("third.ogg", audio_bytes("OGG", 3.0, seed=22), "audio/ogg")])
    rows = {r["name"]: r for r in _wait_uploads_settled(page, 3)}
    states = {n: r["state"] for n, r in rows.items()}
    assert states == {"first.wav": "tagged", "broken.wav": "failed", "third.ogg": "tagged"}
    assert "not a readable" in rows["broken.wav"]["result"] or "WAV" in rows["broken.wav"]["result"], rows["broken.wav"]
    assert rows["first.wav"]["clip"] and rows["third.ogg"]["clip"]
    page.wait_for_selector("#clip-view[data-loaded]")
    assert page.locator("#clip-source").text_content() == "upload:first.wav"  # the first good one is shown
    page.screenshot(path=str(OUT / "page-drop.png"))


def test_recording_from_the_microphone_is_tagged_and_stored(server, playwright, tmp_path):
    # Chromium's fake capture device plays a real ESC-50 clip (a dog) into the microphone.
    samples, sr = sf.read(SAMPLES / "5-203128-A-0.ogg", dtype="int16")
    wav = tmp_path / "mic.wav"
    sf.write(wav, samples, sr, subtype="PCM_16")
    b = _launch(playwright, ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                             f"--use-file-for-fake-audio-capture={wav}"])
    try:
        page = b.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.click("#record")
        page.wait_for_function("document.getElementById('record').getAttribute('aria-pressed') === 'true'")
        page.wait_for_function("+document.getElementById('level').getAttribute('aria-valuenow') > 0", timeout=5_000)
        page.wait_for_timeout(2500)
        page.click("#record")  # a second press stops early
        (row,) = _wait_uploads_settled(page, 1)
        assert row["state"] == "tagged", row
        assert row["name"].startswith("recording-") and row["name"].endswith(".webm")
        page.wait_for_selector("#clip-view[data-loaded]")
        assert page.locator("#top3 .row").count() == 3
        assert page.locator("#player").is_visible()  # the recording can be heard
        stored = httpx.get(f"{server}/api/clips/{row['clip']}").json()
        assert stored["status"] == "tagged" and stored["source"] == f"upload:{row['name']}" and len(stored["top3"]) == 3
        assert 1.5 <= stored["duration_s"] <= 5.0, stored["duration_s"]
        assert errors == []
    finally:
        b.close()


def test_no_microphone_says_so(server, page):
    page.goto(server + "/")
    page.focus("#record")
    page.keyboard.press("Enter")  # keyboard-operable
    page.wait_for_function("document.getElementById('record-status').classList.contains('error')")
    assert "microphone" in page.locator("#record-status").text_content().lower()


def test_collection_view_after_ingesting_a_folder_with_a_failed_file(server, env, page, tmp_path):
    folder = tmp_path / "field-recordings"
    folder.mkdir()
    for name in ("5-203128-A-0.ogg", "5-151085-A-20.ogg", "5-194930-A-1.ogg"):
        shutil.copy(SAMPLES / name, folder / name)
    (folder / "cut-off.wav").write_bytes(audio_bytes("WAV", 2.0, seed=31)[:3000])
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(folder)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert "3 tagged" in run.stdout + run.stderr and "1 failed" in run.stdout + run.stderr, run.stdout + run.stderr

    page.goto(server + "/#collection")
    page.wait_for_selector("#collection[data-loaded]")
    page.wait_for_function("document.querySelectorAll('#failures tbody tr').length > 0")
    failures = page.locator("#failures tbody").inner_text()
    assert str(folder / "cut-off.wav") in failures and "truncated" in failures

    labels = httpx.get(f"{server}/api/labels").json()["items"]
    bars = page.eval_on_selector_all("#label-chart .bar-row", "bs => bs.map(b => [b.dataset.label, +b.dataset.count])")
    assert bars == [[c["label"], c["top1"]] for c in labels if c["top1"] > 0]
    summary = httpx.get(f"{server}/api/summary").json()
    chips = page.eval_on_selector_all("#status-counts .status-chip",
                                      "bs => bs.map(b => [b.dataset.status, +b.dataset.count])")
    assert dict(chips) == summary["status_counts"]
    hist = page.eval_on_selector_all("#confidence-chart .col", "cs => cs.map(c => +c.dataset.count)")
    assert hist == summary["confidence_counts"]
    page.screenshot(path=str(OUT / "page-collection.png"), full_page=True)

    # a bar lists its clips; the status filter lists the failures
    label, count = bars[0]
    page.click(f"#label-chart .bar-row[data-label='{label}']")
    page.wait_for_function("l => document.getElementById('label-filter').value === l", arg=label)
    page.wait_for_function(f"document.querySelectorAll('#clip-table tbody tr').length >= {count}")
    page.click("#status-counts .status-chip[data-status='failed']")
    page.wait_for_function("""() => {
        const cells = [...document.querySelectorAll('#clip-table tbody tr td:nth-child(6)')];
        return cells.length > 0 && cells.every(t => t.textContent === 'failed'); }""")


def _wav(x: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, x.astype(np.float32), 44100, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_verdicts_and_events_are_shown(server, page):
    OUT.mkdir(exist_ok=True)
    page.goto(server + "/")
    x = np.zeros(44100 * 15, np.float32)
    sound = sf.read(str(SAMPLES / "5-151085-A-20.ogg"), dtype="float32")[0][: int(44100 * 3.2)]
    x[int(44100 * 6.2) : int(44100 * 6.2) + len(sound)] = sound
    _upload(page, "a-baby-in-a-quiet-room.wav", _wav(x))
    windows = page.eval_on_selector_all("#timeline-plot .win", "ws => ws.map(w => w.className)")
    assert any("verdict-silence" in w for w in windows) and page.locator("#timeline-plot .event").count() >= 1
    first = page.locator("#timeline-plot .event").first
    assert 6.0 <= float(first.get_attribute("data-start")) < 7.5
    page.screenshot(path=str(OUT / "page-events.png"), full_page=True)

    _upload(page, "nothing.wav", _wav(np.zeros(44100 * 3, np.float32)))
    assert page.locator("#clip-verdict").is_visible()
    assert page.locator("#clip-verdict").get_attribute("data-verdict") == "silence"
    assert "Silence" in page.locator("#clip-verdict").text_content()

    page.goto(server + "/#collection")
    page.wait_for_selector("#collection[data-loaded]")
    summary = httpx.get(f"{server}/api/summary").json()
    page.wait_for_function("document.querySelectorAll('#verdict-counts .verdict-chip').length === 3")
    chips = page.eval_on_selector_all("#verdict-counts .verdict-chip",
                                      "bs => bs.map(b => [b.dataset.verdict, +b.dataset.count])")
    assert dict(chips) == summary["verdict_counts"] and summary["verdict_counts"]["silence"] >= 1
    page.click("#verdict-counts .verdict-chip[data-verdict='silence']")
    page.wait_for_function("""() => {
        const rows = [...document.querySelectorAll('#clip-table tbody tr')];
        return rows.length > 0 && rows.every(r => r.children[4].textContent === 'silence'); }""")


def test_phone_width_nothing_overflows(server, browser):
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.goto(server + "/")
    _upload(page, "phone.wav", _noisy_wav(7.0, seed=41))
    page.wait_for_selector("#collection[data-loaded]")
    _no_horizontal_overflow(page)
    page.screenshot(path=str(OUT / "page-phone.png"), full_page=True)
    page.goto(server + "/#collection")
    page.wait_for_selector("#collection[data-loaded]")
    _no_horizontal_overflow(page)
    ctx.close()


def test_every_control_has_a_name_and_is_reachable_by_keyboard(server, page):
    page.goto(server + "/")
    page.wait_for_selector("#collection[data-loaded]")
    unnamed = page.evaluate("""() => [...document.querySelectorAll(
            'button, input:not([hidden]), select, [role=slider], [role=button]')]
        .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert {"drop", "record", "min-conf", "label-filter", "status-filter"} <= reached


# A front end on another origin, as the original system's page calls /inference.
CROSS_ORIGIN_PAGE = """<!doctype html><meta charset="utf-8"><canvas id="spec"></canvas><pre id="out"></pre>
<script>
async function run(api, b64) {
  try {
    const r = await fetch(api + "/inference", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify({ data: b64 }) });
    const body = await r.json();
    const s = body.input_spectrogram, [h, w] = s.shape, c = document.getElementById("spec");
    c.width = w; c.height = h;
    const flat = s.values.flat(), lo = Math.min(...flat), hi = Math.max(...flat), ctx = c.getContext("2d");
    const img = ctx.createImageData(w, h);
    flat.forEach((v, i) => { const g = 255 * (v - lo) / (hi - lo || 1); img.data.set([g, g, g, 255], i * 4); });
    ctx.putImageData(img, 0, 0);
    const layers = Object.fromEntries(Object.entries(body.visualization).map(([k, v]) => [k, v.shape]));
    document.getElementById("out").textContent = JSON.stringify({ predictions: body.predictions, layers });
  } catch (e) {
    document.getElementById("out").textContent = "error: " + e;
  }
}
</script>"""


def test_a_page_on_another_origin_calls_inference(server, other_origins, browser):
    allowed, refused = other_origins
    b64 = base64.b64encode(audio_bytes("WAV", 2.0, seed=51)).decode()
    page = browser.new_page()
    page.goto(allowed.url + "/front.html")
    page.evaluate("([api, b64]) => run(api, b64)", [server, b64])
    out = json.loads(page.locator("#out").text_content())
    assert len(out["predictions"]) == 3 and {"class", "confidence"} <= set(out["predictions"][0])
    layers = out["layers"]
    # the original's layer names and (frequency, time) maps: stem, stages, every block before/after its ReLU
    assert {"conv1", "layer1", "layer2", "layer3", "layer4"} <= set(layers)
    assert {"layer1.block0.conv", "layer1.block0.relu", "layer4.block1.relu"} <= set(layers)
    assert all(len(shape) == 2 for shape in layers.values())
    assert layers["conv1"][1] == 2 * layers["layer2"][1] or layers["conv1"][1] > layers["layer4"][1]
    assert _nonblank(page, "#spec") == [True]
    assert page.locator("#spec").evaluate("c => c.width") == 1 + 2 * 44100 // 512  # the clip's real length

    page.goto(refused.url + "/front.html")  # an origin the server does not list
    page.evaluate("([api, b64]) => run(api, b64)", [server, b64])
    assert page.locator("#out").text_content().startswith("error: TypeError")
    page.close()


def test_more_like_this_and_search_by_a_dropped_file(server, page):
    page.goto(server + "/")
    names = sorted(p.name for p in SAMPLES.glob("*.ogg"))[:4]
    for name in names:
        _upload(page, name, (SAMPLES / name).read_bytes(), "audio/ogg")
    shown = page.locator("#clip-id").text_content()
    # A new clip is in every API process's index within seconds: ask until it answers.
    wait_until(lambda: httpx.get(f"{server}/api/clips/{shown}/similar").status_code == 200, 30,
               "the new clip to be in the similarity index")
    page.click("#more-like-this")
    page.wait_for_function("document.querySelectorAll('#similar-table tbody tr').length >= 3")
    rows = page.eval_on_selector_all("#similar-table tbody tr", "rs => rs.map(r => r.dataset.clipId)")
    assert shown not in rows
    scores = page.eval_on_selector_all("#similar-table tbody tr td:nth-child(2)", "ts => ts.map(t => +t.textContent)")
    assert scores == sorted(scores, reverse=True)

    page.set_input_files("#search-file", files=[{"name": names[0], "mimeType": "audio/ogg",
                                                 "buffer": (SAMPLES / names[0]).read_bytes()}])
    page.wait_for_function(f"document.querySelector('#similar-query').textContent.includes('{names[0]}')")
    page.wait_for_function("+document.querySelector('#similar-table tbody tr td:nth-child(2)').textContent > 0.999")
    page.screenshot(path=str(OUT / "page-similar.png"), full_page=True)


def test_label_the_selected_clips_from_the_collection_and_see_the_labels(server, page):
    page.goto(server + "/")
    for i in range(5):
        _upload(page, f"hum{i}.wav", _wav(0.3 * np.sin(2 * np.pi * (90 + 7 * i) * np.arange(44100 * 2) / 44100)))
        _upload(page, f"hiss{i}.wav", _wav(0.1 * np.random.default_rng(i).standard_normal(44100 * 2)))
    page.goto(server + "/#collection")
    page.wait_for_selector("#collection[data-loaded]")

    def select(prefix: str) -> None:
        while page.locator("#more").is_visible():  # every clip of the collection on the table
            rows = page.locator("#clip-table tbody tr").count()
            page.click("#more")
            page.wait_for_function(f"document.querySelectorAll('#clip-table tbody tr').length > {rows}")
        for box in page.locator("#clip-table tbody tr").all():
            if box.locator("td.wide").text_content().startswith(f"upload:{prefix}"):
                box.locator("input.select").check()

    def teach(label: str) -> None:
        page.fill("#teach-label", label)
        page.fill("#teach-set", "room")
        page.click("#teach-form button[type=submit]")

    select("hum")
    teach("hum")
    page.wait_for_function("document.querySelector('#teach-status').textContent.includes('examples saved')")
    select("hiss")
    teach("hiss")
    page.wait_for_function("document.querySelector('#teach-status').textContent.includes('version 1')")
    page.wait_for_selector("#label-sets li[data-label-set='room']")
    page.wait_for_function("""() => [...document.querySelectorAll('#clip-table tbody tr')]
        .some(r => r.children[6].textContent.startsWith('room: '))""")
    page.locator("#clip-table tbody tr a").first.click()
    page.wait_for_selector("#clip-custom .custom-chip[data-label-set='room']")
    page.screenshot(path=str(OUT / "page-label-sets.png"), full_page=True)
