"""Print the benchmark figures the issues ask for; each compares against a baseline
measured in the same run, on this machine, at this moment.

    python -m deploy.benchmarks.run              # every suite but gpu; each prints its benchmark_seconds
    python -m deploy.benchmarks.run core api     # some
    python -m deploy.benchmarks.run --quick core # small sizes, to check the scripts work

Figures are also written to test-output/benchmarks-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from deploy.benchmarks.common import cpu_name

# and "gpu", asked for by name
SUITES = ("core", "formats", "versus", "engines", "api", "load", "stream", "long", "similar")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run, figures not meaningful)")
    parser.add_argument("--clips", type=Path, metavar="DIR",
                        help="the .ogg clips to use (default: ESC-50 in ../shared, else the bundled samples)")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="gpu: clips and the CPU's answers to compare with (bench_gpu reference DIR)")
    args = parser.parse_args()
    if args.clips is not None:
        from deploy.benchmarks import common

        common.CLIPS_DIR = args.clips
    if args.reference is not None:
        from deploy.benchmarks import bench_gpu

        bench_gpu.REFERENCE = args.reference
    out_dir = Path("test-output")
    out_dir.mkdir(exist_ok=True)
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name in args.suites or SUITES:
        module = __import__(f"deploy.benchmarks.bench_{name}", fromlist=["run"])
        t0 = time.perf_counter()
        figures = module.run(quick=args.quick)
        figures["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"\n## {name}")
        for key, value in figures.items():
            print(f"{key:<40} {value}")
        (out_dir / f"benchmarks-{name}.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
