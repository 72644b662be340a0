"""The extraction loop a user writes with timm alone: the baseline of bench_extract.py --vs-timm.

torchvision ``ImageFolder`` + timm's own eval transform (``resolve_data_config`` +
``create_transform``: resize, center crop, normalise), ``DataLoader(batch_size=32)`` with its
defaults, ``model.forward_features`` with forward hooks on the hooked blocks, the same 12
(layer, pooling) outputs as ``transferlab extract --layers -1,-2,-3,-4 --pool avg,max,grid2``
(avg = spatial mean, max = spatial max, grid2 = 2x2 adaptive max cells, row-major), one
``np.save`` per split and output (``OUT/<split>/<layer>__<pool>.npy``, as ``transferlab
extract --out`` lays them out). Eager, no BatchNorm folding, default memory format.

    python benchmarks/plain_timm_loop.py WEIGHTS.pth ROOT OUT [--arch tf_efficientnet_lite0]

ROOT holds one ImageFolder per split: ROOT/<split>/<class>/<image>.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

HOOKED = ("blocks.6", "blocks.5", "blocks.4")  # layers -2, -3, -4 of the built-in source


def pooled(x: torch.Tensor) -> dict[str, torch.Tensor]:
    grid = F.adaptive_max_pool2d(x, 2).flatten(2).transpose(1, 2).reshape(x.shape[0], -1)
    return {"avg": x.mean(dim=(2, 3)), "max": x.amax(dim=(2, 3)), "grid2": grid}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    args = parser.parse_args()

    model = timm.create_model(args.arch, pretrained=False)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    transform = create_transform(**resolve_data_config({}, model=model))

    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name in HOOKED:
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
    for split in sorted(p for p in Path(args.root).iterdir() if p.is_dir()):
        loader = DataLoader(ImageFolder(str(split), transform=transform), batch_size=32)
        results: dict[str, list[np.ndarray]] = {}
        with torch.inference_mode():
            for images, _ in loader:
                captured.clear()
                captured["features"] = model.forward_features(images)
                for layer, activation in captured.items():
                    for pooling, value in pooled(activation).items():
                        results.setdefault(f"{layer}__{pooling}", []).append(value.numpy())
        out = Path(args.out) / split.name
        out.mkdir(parents=True, exist_ok=True)
        for name, parts in results.items():
            np.save(out / f"{name}.npy", np.concatenate(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
