#!/usr/bin/env bash
# The main job (README): install soundtag if this machine does not have it yet, then
# `soundtag demo` — tag the bundled ESC-50 sample clips into an embedded SQLite
# database and serve the page on http://127.0.0.1:8000. Extra arguments go to
# `soundtag demo` (e.g. --port 8080, --no-serve).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed and current: the modules import and the `soundtag` script runs (an install
# from before the command moved to deploy/cli.py has a stale script).
if ! { python -c "import deploy.cli, torch, torchaudio, fastapi, soxr, av, usearch" && soundtag --help; } >/dev/null 2>&1; then
  echo "installing soundtag (first run only; torch comes from this machine's disk)…"
  python -m pip install -q --disable-pip-version-check -e . 2>&1 \
    | grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root' user" || true
fi

exec soundtag demo "$@"
