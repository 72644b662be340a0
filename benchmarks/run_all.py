"""Run every benchmark in turn with its default settings (`make bench`); each writes its
figures to benchmarks/results/<name>.json. Long: tens of minutes on 2 CPU cores.

    .venv/bin/python benchmarks/run_all.py [--only extract,probe]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["decode", "extract", "tokens", "probe", "retrieval", "select", "study"]
# benchmarks that run more than once: extract also times the plain timm loop against `transferlab extract`
RUNS = {"extract": [[], ["--vs-timm", "--sizes", "128,256,512", "--rounds", "2"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else BENCHMARKS
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        for extra in RUNS.get(name, [[]]):
            command = [sys.executable, str(HERE / f"bench_{name}.py"), *extra]
            print(f"$ {' '.join(command)}", flush=True)
            start = time.perf_counter()
            if subprocess.call(command) != 0:
                print(f"bench_{name}.py failed", file=sys.stderr)
                return 1
            print(f"({time.perf_counter() - start:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
