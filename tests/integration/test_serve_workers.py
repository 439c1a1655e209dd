"""`soundtag serve --workers N`: several API processes on one port, each answering."""

import os

import httpx

from deploy.processes import api_server
from tests.helpers import audio_bytes, migrated_database


def test_two_api_processes_share_the_port_and_the_database(random_checkpoint, tmp_path):
    with migrated_database("soundtag_workers") as (_, url):
        env = {"SOUNDTAG_DATABASE_URL": url, "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
               "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu", "SOUNDTAG_API_KEY": ""}
        os.environ.pop("SOUNDTAG_API_KEY", None)
        with api_server(env, tmp_path / "api.log", workers=2) as base, httpx.Client(base_url=base, timeout=60) as c:
            r = c.post("/api/clips", files=[("files", ("a.wav", audio_bytes("WAV", 1.0, seed=3)))],
                       data={"clip_id": "shared"})
            assert r.status_code == 201, r.text
            # Requests land on either process; each reads the same clip from PostgreSQL.
            assert all(c.get("/api/clips/shared").json()["clip_id"] == "shared" for _ in range(20))
        log = (tmp_path / "api.log").read_text()
        assert log.count("Application startup complete") == 2, log[-2000:]
