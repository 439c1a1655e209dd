"""The commands that tag nothing start without torch: importing it takes seconds of CPU
(2.5 s on a 2-core VM), which ``soundtag publish``, ``soundtag db`` and ``--help`` would pay on
every run for nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

_CHECK = """
import sys
from deploy import cli
for argv in (["--help"], ["publish", "--help"], ["db", "--help"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
import stream.producer  # what `soundtag publish` runs
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchaudio", "onnxruntime", "faust"})
print("HEAVY", heavy[:5])
"""


def test_publish_db_and_help_do_not_import_torch():
    done = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]
