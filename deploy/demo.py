"""`soundtag demo`: tag the bundled ESC-50 sample clips, print their top 3, serve the page."""

from __future__ import annotations

import socket
import sys

from tagger.config import SAMPLES_DIR, database_label, get_settings
from tagger.files import find_audio_files
from tagger.ingest_processes import ingest_job
from tagger.repository import get_clip
from tagger.startup import load_tagger, open_database, pipeline_job


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def run_demo(host: str = "127.0.0.1", port: int = 8000, serve: bool = True) -> int:
    settings = get_settings()
    if serve and not _port_free(host, port):
        print(f"soundtag: error: {host}:{port} is in use; pick another with --port", file=sys.stderr)
        return 2
    tagger = load_tagger(settings)
    db_label = database_label(settings.database_url)
    print(f"model {tagger.version} on {tagger.device}; database {db_label}")
    sessions = open_database(settings)
    files = find_audio_files([SAMPLES_DIR]).audio
    # The same way as `soundtag ingest`: in the process pool.
    summary = ingest_job(files, pipeline_job(settings))
    print(summary)
    from tagger.audio import sha256_hex

    print(f"\n{'sample':<22} {'1st':<26} {'2nd':<26} {'3rd':<26}")
    with sessions() as session:
        for path in files:
            clip = get_clip(session, sha256_hex(path.read_bytes()))
            cells = [f"{label} {conf:.0%}" for label, conf in clip.top3] if clip else ["(missing)"]
            print(f"{path.name:<22} " + " ".join(f"{c:<26}" for c in cells))
    if not serve:
        return 0
    from api.main import serve as serve_api

    print(f"\nsoundtag is serving the page at http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)\n", flush=True)
    serve_api(host=host, port=port, settings=settings, tagger=tagger)
    return 0
