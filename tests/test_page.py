"""The page in real headless Chromium (Debian's), driven by Playwright."""

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from tagger import db
from tests.conftest import audio_bytes
from tests.servers import api_server

pytestmark = pytest.mark.browser
OUT = Path(__file__).resolve().parent.parent / "test-output"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS_NAME = "<script>alert(1)</script>.wav"


@pytest.fixture(scope="module")
def server(pg_url, random_checkpoint, tmp_path_factory):
    with db.get_engine(pg_url).begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    env = {"SOUNDTAG_DATABASE_URL": pg_url, "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
           "SOUNDTAG_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu"}
    with api_server(env, tmp_path_factory.mktemp("logs") / "api.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _nonblank(page, selector: str) -> list[bool]:
    return page.eval_on_selector_all(selector, """cs => cs.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]); hi = Math.max(hi, d[i + 1]); }
        return c.width > 0 && hi - lo > 10;  // more than one colour drawn
    })""")


def test_upload_view_permalink_filter_and_no_script_injection(server, browser, tmp_path):
    OUT.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 2200})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")

    clip = tmp_path / XSS_NAME.replace("/", "_")
    clip.write_bytes(audio_bytes("OGG", 12.0, seed=5))
    page.set_input_files("#file", files=[{"name": XSS_NAME, "mimeType": "audio/ogg", "buffer": clip.read_bytes()}])
    page.wait_for_selector("#clip-view[data-loaded]", timeout=60_000)

    assert page.locator("#top3 .row").count() == 3
    assert page.locator("#clip-source").text_content() == f"upload:{XSS_NAME}"  # shown as text
    assert all(_nonblank(page, "canvas.heatmap")), "a heatmap is blank"
    assert page.locator("canvas.fmap").count() == 5 * 5  # 5 taps × (mean + 4 channels)
    assert _nonblank(page, "#waveform") == [True]
    assert page.locator("#timeline .win").count() == 4  # 12 s: windows overlapping by half, the last ending at 12 s
    page.screenshot(path=str(OUT / "page-upload.png"), full_page=True)

    # the clip browser shows the name as text too
    page.wait_for_selector("#clip-table tbody tr")
    assert XSS_NAME in page.locator("#clip-table tbody").inner_text()
    assert page.locator("#clip-table script").count() == 0 and page.locator("#clip-view script").count() == 0

    # permalink
    clip_id = page.locator("#clip-id").text_content()
    fresh = browser.new_page()
    fresh.goto(server + "/?clip=" + clip_id)
    fresh.wait_for_selector("#clip-view[data-loaded]", timeout=30_000)
    assert fresh.locator("#clip-id").text_content() == clip_id
    assert all(_nonblank(fresh, "canvas.heatmap"))

    # filter by label: the clip's top label finds it, another label does not
    top_label = page.locator("#top3 .row .label").first.text_content()
    page.select_option("#label-filter", top_label)
    page.click("#filter button")
    page.wait_for_function("document.querySelectorAll('#clip-table tbody tr').length >= 1")
    rows = page.eval_on_selector_all("#clip-table tbody tr", "rs => rs.map(r => r.dataset.clipId)")
    assert clip_id in rows
    other = next(o for o in page.eval_on_selector_all("#label-filter option", "os => os.map(o => o.value)")
                 if o and o != top_label and o not in [t.text_content() for t in page.locator('#top3 .label').all()])
    page.select_option("#label-filter", other)
    page.click("#filter button")
    page.wait_for_function("document.querySelectorAll('#clip-table tbody tr').length === 0")
    page.screenshot(path=str(OUT / "page-filter.png"), full_page=True)

    assert dialogs == [], "a script from the file name ran"
    assert errors == []
