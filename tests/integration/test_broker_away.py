"""With no broker: publish says so and exits non-zero, a worker neither floods its log
nor takes a minute to stop."""

import os
import signal
import subprocess
import sys
import time

import pytest

from deploy.processes import free_port
from tests.helpers import audio_bytes


def test_publish_with_the_broker_gone_ends_with_a_summary(tmp_path):
    (tmp_path / "a.wav").write_bytes(audio_bytes())
    (tmp_path / "notes.txt").write_text("not audio")
    env = {**os.environ, "SOUNDTAG_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    # It gives up by itself (after about 20 s); the timeout only catches a hang.
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "publish", str(tmp_path), "--quiet"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Kafka broker unreachable" in r.stdout and "0 sent, 1 not sent, 1 not audio" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.slow
def test_worker_without_a_broker_waits_quietly_and_stops_within_seconds(tmp_path, pg_url,
                                                                                 random_checkpoint):
    env = {**os.environ, "SOUNDTAG_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "SOUNDTAG_DATABASE_URL": pg_url,
           "SOUNDTAG_MODEL_PATH": str(random_checkpoint), "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1",
           "SOUNDTAG_DEVICE": "cpu"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and "soundtag worker: model" not in log_path.read_text():
                time.sleep(0.5)
            time.sleep(15)  # no broker all along
            assert proc.poll() is None, log_path.read_text()[-3000:]
            lines_during = len(log_path.read_text().splitlines())
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)  # it stops by itself within seconds; the timeout only catches a hang
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert lines_during <= 3 and text.count("unreachable; waiting for it") == 1, text[-3000:]
    assert proc.returncode == 0
