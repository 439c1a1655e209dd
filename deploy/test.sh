#!/usr/bin/env bash
# The test command (README; .ci/run calls it). Installs what the suite needs on a
# fresh machine of this kind, makes sure PostgreSQL is up, then runs every test:
# real PostgreSQL, a real Kafka-protocol broker (tansu), real headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q --disable-pip-version-check -e '.[test,train,dev]' 2>&1 \
  | grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root' user" || true

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the page tests…"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL…"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

# The gate first (seconds): lint and types, as .pre-commit-config.yaml runs them.
echo "ruff…" && python -m ruff check .
echo "mypy…" && python -m mypy
# Then every test: tests/unit (no services, under a minute), then tests/integration.
exec python -m pytest -q -ra "$@"
