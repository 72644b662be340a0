"""Training throughput of the source families at 32 px on CPU (images/s per training step:
forward, backward, SGD update; batch 64, channels-last, the threads train_source uses).

Each (family, width) is timed twice, the second pass in reverse order (ABBA), so a change in
machine load during the run shows up as a gap between the two figures instead of biasing one
family. Run: ``python benchmarks/bench_train_source.py [--seconds 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from transferlab.sources.architectures import ArchSpec, build_network, count_parameters
from transferlab.sources.train import TRAIN_THREADS

FAMILIES = [(arch, width) for arch in ("alexnet", "vgg16") for width in ("tiny", "small", "medium")]


def images_per_second(arch: str, width: str, seconds: float, batch: int = 64) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_network(ArchSpec(arch, width, 32, 10)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN primitive creation
        step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - started), count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per family and pass [3]")
    parser.add_argument("--threads", type=int, default=TRAIN_THREADS, help=f"torch threads [{TRAIN_THREADS}]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    for order in (FAMILIES, FAMILIES[::-1]):
        for arch, width in order:
            rate, params[f"{arch}-{width}"] = images_per_second(arch, width, args.seconds)
            rates.setdefault(f"{arch}-{width}", []).append(round(rate, 1))
    for name, (a, b) in rates.items():
        print(f"{name:16s} {params[name] / 1e6:6.2f}M params  {a:7.1f} / {b:7.1f} img/s (pass 1 / pass 2)")
    print(json.dumps({"threads": args.threads, "images_per_second": rates, "parameters": params}))


if __name__ == "__main__":
    main()
