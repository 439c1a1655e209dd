"""Schemathesis over the OpenAPI schema of a real running server: no 5xx answer, ever."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from deploy.processes import api_server
from tagger import db


@pytest.mark.slow
def test_no_server_errors_for_any_schema_valid_or_invalid_request(pg_url, random_checkpoint, tmp_path):
    with db.get_engine(pg_url).begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    env = {"SOUNDTAG_DATABASE_URL": pg_url, "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
           "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu", "SOUNDTAG_API_KEY": "k"}
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    with api_server(env, tmp_path / "api.log") as url:
        run = subprocess.run(
            [exe, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "150",
             "--header", "X-API-Key: k", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
