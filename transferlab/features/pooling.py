"""Tiny functional pooling layers (cnnimageretrieval-pytorch style), computed on the device.

Each takes a feature map ``x`` of shape (B, C, H, W) and returns (B, D), except
``windows`` which returns one descriptor per sub-window, (B, R, C), for spatial search.
Vector layers (B, C) (AlexNet/VGG fc6/fc7) accept only ``avg``/``max``, which are the
identity there.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch
import torch.nn.functional as F

from transferlab.errors import TransferlabError

POOLINGS = ("avg", "max", "gem", "grid1", "grid2", "grid3", "rmac", "windows")
_GRID = re.compile(r"^grid(\d)$")


def avg_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(2, 3))


def gem_pool(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean (Radenović et al.): (mean x^p)^(1/p) over positive activations."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def grid_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """K x K cells, each max-pooled, concatenated cell by cell (row-major): (B, K*K*C)."""
    cells = F.adaptive_max_pool2d(x, k)  # (B, C, k, k)
    return cells.flatten(2).transpose(1, 2).reshape(x.shape[0], -1)


@lru_cache(maxsize=64)
def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> tuple[tuple[int, int, int, int], ...]:
    """R-MAC regions of Tolias et al. (2016) as (y, x, h, w) cells, the whole map first.

    Square regions at ``levels`` scales; at scale l the side is 2*min(H,W)/(l+1) and the
    number along the long side is chosen so neighbours overlap by about ``overlap``.
    """
    side = min(height, width)
    steps = torch.tensor([2, 3, 4, 5, 6, 7], dtype=torch.float64)
    b = (max(height, width) - side) / (steps - 1)
    idx = int(torch.argmin(torch.abs(((side**2 - side * b) / side**2) - overlap)))
    extra_w = idx + 1 if height < width else 0
    extra_h = idx + 1 if height > width else 0
    regions = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        wl = math.floor(2 * side / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)
        step_w = 0 if level + extra_w == 1 else (width - wl) / (level + extra_w - 1)
        step_h = 0 if level + extra_h == 1 else (height - wl) / (level + extra_h - 1)
        xs = [int(math.floor(wl2 + i * step_w) - wl2) for i in range(level + extra_w)]
        ys = [int(math.floor(wl2 + i * step_h) - wl2) for i in range(level + extra_h)]
        regions.extend((y, x, wl, wl) for y in ys for x in xs)
    return tuple(regions)


def rmac_pool(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Sum of L2-normalised max-pooled R-MAC regions (the final L2 is post-processing's job)."""
    out = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=x.dtype)
    for y, x0, h, w in rmac_regions(x.shape[2], x.shape[3], levels):
        region = x[:, :, y:y + h, x0:x0 + w].amax(dim=(2, 3))
        out += region / (region.norm(dim=1, keepdim=True) + eps)
    return out


def window_cells(height: int, width: int, windows: torch.Tensor | list) -> list[tuple[int, int, int, int]]:
    """Normalised (x1, y1, x2, y2) windows -> (y, x, h, w) cells of an H x W map, >= 1 cell each."""
    cells = []
    for x1, y1, x2, y2 in (windows.tolist() if hasattr(windows, "tolist") else windows):
        c0 = min(width - 1, int(math.floor(x1 * width)))
        r0 = min(height - 1, int(math.floor(y1 * height)))
        c1 = max(c0 + 1, int(math.ceil(x2 * width)))
        r1 = max(r0 + 1, int(math.ceil(y2 * height)))
        cells.append((r0, c0, r1 - r0, c1 - c0))
    return cells


def windows_pool(x: torch.Tensor, windows: list) -> torch.Tensor:
    """Max-pool each sub-window of the map: (B, R, C), for spatial search."""
    cells = window_cells(x.shape[2], x.shape[3], windows)
    return torch.stack([x[:, :, y:y + h, c:c + w].amax(dim=(2, 3)) for y, c, h, w in cells], dim=1)


def default_windows() -> list[tuple[float, float, float, float]]:
    """Sub-windows for spatial search: whole image, then 2x2 and 3x3 grids overlapping by half."""
    try:
        from transferlab.heads.retrieval import spatial_windows
    except ImportError:
        spatial_windows = None
    if spatial_windows is not None:
        return [tuple(map(float, w)) for w in spatial_windows()]
    out = [(0.0, 0.0, 1.0, 1.0)]
    for level in (2, 3):
        side = 2.0 / (level + 1)
        step = (1.0 - side) / (level - 1)
        for i in range(level):
            for j in range(level):
                out.append((j * step, i * step, j * step + side, i * step + side))
    return out


def validate_pooling(name: str) -> str:
    if name in POOLINGS or _GRID.match(name):
        return name
    raise TransferlabError(f"unknown pooling {name!r}; choose from {', '.join(POOLINGS)}")


def pool(x: torch.Tensor, name: str, windows: list | None = None) -> torch.Tensor:
    """Apply the named pooling to a hooked layer output."""
    if x.dim() == 2:
        if name in ("avg", "max"):
            return x
        raise TransferlabError(f"pooling {name!r} needs a spatial layer; this layer is a vector (use avg)")
    if x.dim() != 4:
        raise TransferlabError(f"cannot pool a layer output of shape {tuple(x.shape)}")
    if name == "avg":
        return avg_pool(x)
    if name == "max":
        return max_pool(x)
    if name == "gem":
        return gem_pool(x)
    if name == "rmac":
        return rmac_pool(x)
    if name == "windows":
        return windows_pool(x, windows if windows is not None else default_windows())
    match = _GRID.match(name)
    if match:
        return grid_pool(x, int(match.group(1)))
    raise TransferlabError(f"unknown pooling {name!r}; choose from {', '.join(POOLINGS)}")


def pooled_shape(channels: int, spatial: bool, name: str, n_windows: int | None = None) -> tuple[int, ...]:
    """Shape of one image's pooled vector, known before any forward pass."""
    validate_pooling(name)
    if not spatial:
        if name not in ("avg", "max"):
            raise TransferlabError(f"pooling {name!r} needs a spatial layer; this layer is a vector (use avg)")
        return (channels,)
    if name == "windows":
        return (n_windows or len(default_windows()), channels)
    match = _GRID.match(name)
    if match:
        return (channels * int(match.group(1)) ** 2,)
    return (channels,)
