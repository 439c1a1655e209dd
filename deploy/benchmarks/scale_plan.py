"""Past one machine (issue 48.6): what 10 M and 100 M clips cost, from figures measured here.

Arithmetic, not a measurement: it scales the per-clip and per-million figures the suites
measured (bytes stored per clip from `core`, the index's memory and build time per million
from `similar`, a clip read's CPU from `load`) to a collection size, and says where one
index per API replica stops fitting a machine. Measured figures are read from
``test-output/benchmarks-<suite>.json`` when a suite has run, else the benchmarks README's.

    python -m deploy.benchmarks.scale_plan                       # 1 M, 10 M, 100 M; 4 replicas, 64 GB each
    python -m deploy.benchmarks.scale_plan --replicas 8 --machine-gb 128 --cores 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The benchmarks README's figures (2 cores, AVX-512 BF16), used when no suite output is at hand.
MEASURED = {
    "stored_bytes_per_clip": 27_200,  # core: clip row, tags, compressed features and embedding
    "embedding_blob_bytes": 591,  # 256 float16 values and the codec's header
    "index_bytes_per_clip": 1016,  # similar: usearch HNSW f16, connectivity 32, at 1 M
    "index_build_s_per_million_2_cores": 326.0,  # similar: from rows to a searchable graph
}
TABLE_OVERHEAD = 1.3  # PostgreSQL's row headers, indexes and free space above the payload
HEADROOM = 0.6  # share of a machine's memory an index may take beside the API and the OS


def measured(out_dir: Path = Path("test-output")) -> dict:
    figures = dict(MEASURED)
    similar = out_dir / "benchmarks-similar.json"
    if similar.is_file():
        data = json.loads(similar.read_text())
        largest = max((k.split("_")[0] for k in data if k.endswith("_index_mb_per_million")),
                      key=lambda label: int(label.rstrip("k")), default=None)
        if largest is not None:
            figures["index_bytes_per_clip"] = data[f"{largest}_index_mb_per_million"] * 2**20 / 1e6
            figures["index_build_s_per_million_2_cores"] = data[f"{largest}_build_s_per_million"]
    return figures


def plan(clips: int, replicas: int, machine_gb: float, cores: int, m: dict) -> dict:
    index_gb = clips * m["index_bytes_per_clip"] / 1e9
    fits = index_gb <= machine_gb * HEADROOM
    shards = max(1, -(-int(index_gb * 1000) // int(machine_gb * HEADROOM * 1000)))
    build_min = clips / 1e6 * m["index_build_s_per_million_2_cores"] * 2 / cores / 60
    return {
        "clips": clips,
        "postgresql_gb": clips * m["stored_bytes_per_clip"] * TABLE_OVERHEAD / 1e9,
        "embeddings_in_postgresql_gb": clips * m["embedding_blob_bytes"] / 1e9,
        "index_gb_per_copy": index_gb,
        "one_index_per_replica_gb": index_gb * replicas,
        "fits_one_machine": fits,
        "shards_of_one_machine": shards,
        "build_minutes_on_start": build_min,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4, help="API replicas (default 4)")
    parser.add_argument("--machine-gb", type=float, default=64, help="memory of one API machine (default 64)")
    parser.add_argument("--cores", type=int, default=16, help="cores that build an index on start (default 16)")
    args = parser.parse_args()
    m = measured()
    print(f"{args.replicas} API replicas, {args.machine_gb:g} GB each, an index may take {HEADROOM:.0%} of it; "
          f"builds on {args.cores} cores\n")
    print("| clips | PostgreSQL | embeddings in it | index, one copy | one per replica | fits one machine "
          "| shards | build on start |")
    print("|---|---|---|---|---|---|---|---|")
    for clips in (1_000_000, 10_000_000, 100_000_000):
        p = plan(clips, args.replicas, args.machine_gb, args.cores, m)
        print(f"| {clips / 1e6:g} M | {p['postgresql_gb']:,.0f} GB | {p['embeddings_in_postgresql_gb']:,.1f} GB "
              f"| {p['index_gb_per_copy']:,.1f} GB | {p['one_index_per_replica_gb']:,.0f} GB "
              f"| {'yes' if p['fits_one_machine'] else 'no'} | {p['shards_of_one_machine']} "
              f"| {p['build_minutes_on_start']:,.1f} min |")


if __name__ == "__main__":
    main()
