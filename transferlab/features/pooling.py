"""Poolings: one registry (``POOLING_REGISTRY``) and tiny functional layers computed on the device.

Every pooling is registered once with its function, its output size, the layer kinds it
applies to and its spatial fineness; the rest of the code asks the registry (``get_pooling``,
``pooling_applies``, ``pooled_shape``) instead of repeating which layer takes which pooling.

Layer kinds (``LAYER_KINDS``):
- ``map``: a ConvNet feature map, (B, C, H, W), or channels-last (B, H, W, C) as Swin's;
- ``tokens``: a transformer's token sequence (B, T, C): ``prefix_tokens`` leading tokens (the
  class token first, then register/distillation tokens) followed by the H x W patch tokens
  row-major. Patch tokens are laid back on their grid, so every map pooling applies to them,
  and prefix tokens never enter avg/max/gem/grids;
- ``vector``: a fully connected output (B, C): ``avg``/``max`` are the identity there.

The map functions take (B, C, H, W) and return (B, D), except ``windows`` which returns one
descriptor per sub-window, (B, R, C), for spatial search.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.errors import TransferlabError

LAYER_KINDS = ("map", "tokens", "vector")
_GRID = re.compile(r"^grid(\d+)$")


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
def rmac_regions(
    height: int, width: int, levels: int = 3, overlap: float = 0.4
) -> tuple[tuple[int, int, int, int], ...]:
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


def spatial_windows(levels: Sequence[int] = (1, 2, 3), overlap: float = 0.5) -> np.ndarray:
    """Sub-windows (R, 4) as normalised boxes (x1, y1, x2, y2) in [0, 1], full image first.

    Level l tiles the image with l x l windows of side 1 / (l - (l - 1) * overlap) of the
    image's width and height, consecutive windows overlapping by ``overlap`` of a side (with
    overlap 0.5, side 2 / (l + 1), as in Razavian et al.). Level 1 is the full image, which
    is always the first window (added if 1 is not in ``levels``). Order: level by level,
    rows top to bottom, windows left to right. (1, 2, 3) gives 14 windows, (1, 2, 3, 4) 30.
    """
    if not 0.0 <= float(overlap) < 1.0:
        raise TransferlabError(f"overlap must be in [0, 1), not {overlap!r}")
    lv = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 1:
            raise TransferlabError(f"levels entry must be an integer >= 1, not {level!r}")
        lv.append(int(level))
    if len(set(lv)) != len(lv):
        raise TransferlabError(f"levels must be distinct, got {list(levels)}")
    boxes: list[tuple[float, float, float, float]] = [(0.0, 0.0, 1.0, 1.0)]
    for level in lv:
        if level == 1:
            continue
        side = 1.0 / (level - (level - 1) * overlap)
        step = side * (1.0 - overlap)
        starts = [min(i * step, 1.0 - side) for i in range(level)]
        for y in starts:
            for x in starts:
                boxes.append((x, y, min(1.0, x + side), min(1.0, y + side)))
    return np.asarray(boxes, dtype=np.float32)


def default_windows() -> list[tuple[float, float, float, float]]:
    """Sub-windows for spatial search: whole image, then 2x2 and 3x3 grids overlapping by half."""
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in spatial_windows()]


# ------------------------------------------------------------------------------ registry
class LayerLike(Protocol):
    """What pooling needs to know about a layer (``sources.base.Layer`` has all of it);
    read-only, so frozen dataclasses satisfy it."""

    @property
    def name(self) -> str: ...
    @property
    def channels(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def grid(self) -> tuple[int, int] | None: ...
    @property
    def prefix_tokens(self) -> int: ...
    @property
    def class_token(self) -> bool: ...


GridFn = Callable[..., torch.Tensor]  # (grid (B,C,H,W), prefix (B,P,C) | None, windows) -> (B, D)


@dataclass(frozen=True)
class Pooling:
    """One pooling: its function, which layer kinds can give it, output size and fineness.

    ``fineness`` is the side of its finest grid (global poolings 1, multi-region ones 3); the
    analysis correlates it with task distance. ``needs_class_token``: only token layers whose
    model has a class token can give it."""

    name: str
    function: GridFn
    kinds: frozenset[str]
    fineness: int
    description: str
    needs_class_token: bool = False
    width: int = 1  # output size in units of channels (grid K: K*K; cls+avg: 2)
    per_window: bool = False  # (R, C) per image instead of one vector

    def applies(self, layer: LayerLike) -> bool:
        return layer.kind in self.kinds and (not self.needs_class_token or bool(layer.class_token))

    def why_not(self, layer: LayerLike) -> str:
        """The reason ``layer`` cannot give this pooling (empty when it can)."""
        if self.applies(layer):
            return ""
        if layer.kind in self.kinds:
            pooled = "patch tokens" if layer.kind == "tokens" else "the map"
            return f"its model has no class token (its head pools {pooled})"
        if layer.kind == "vector":
            return "it is a vector (vector layers take only avg/max)"
        kinds = {"map": "a feature map", "tokens": "a token sequence", "vector": "a vector"}
        need = " or ".join(kinds[k] for k in LAYER_KINDS if k in self.kinds)
        return f"it is {kinds.get(layer.kind, layer.kind)}; {self.name} needs {need}"


def _cls(grid, prefix, windows):
    return prefix[:, 0]


def _cls_avg(grid, prefix, windows):
    return torch.cat([prefix[:, 0], avg_pool(grid)], dim=1)


_SPATIAL = frozenset({"map", "tokens"})
_ALL = frozenset(LAYER_KINDS)
_TOKENS = frozenset({"tokens"})

POOLING_REGISTRY: dict[str, Pooling] = {}


def register_pooling(pooling: Pooling) -> Pooling:
    """Add a pooling: its name, function, output width, the layer kinds it applies to and its
    fineness come from this one entry. A name is registered once (a second one is an error)."""
    if pooling.name in POOLING_REGISTRY:
        raise TransferlabError(f"pooling {pooling.name!r} is registered twice")
    POOLING_REGISTRY[pooling.name] = pooling
    return pooling


for _pooling in [
    Pooling("avg", lambda g, p, w: avg_pool(g), _ALL, 1, "global average (patch tokens only; identity on vectors)"),
    Pooling("max", lambda g, p, w: max_pool(g), _ALL, 1, "global max (patch tokens only; identity on vectors)"),
    Pooling("gem", lambda g, p, w: gem_pool(g), _SPATIAL, 1, "generalised mean, p = 3"),
    Pooling("grid1", lambda g, p, w: grid_pool(g, 1), _SPATIAL, 1, "1x1 max cell (= max)"),
    Pooling("grid2", lambda g, p, w: grid_pool(g, 2), _SPATIAL, 2, "2x2 max cells, row-major", width=4),
    Pooling("grid3", lambda g, p, w: grid_pool(g, 3), _SPATIAL, 3, "3x3 max cells, row-major", width=9),
    Pooling("rmac", lambda g, p, w: rmac_pool(g), _SPATIAL, 3, "R-MAC regions at 3 scales, summed"),
    Pooling("windows", lambda g, p, w: windows_pool(g, w), _SPATIAL, 3,
            "one max-pooled descriptor per spatial-search window (retrieval)", per_window=True),
    Pooling("cls", _cls, _TOKENS, 1, "the class token", needs_class_token=True),
    Pooling("cls+avg", _cls_avg, _TOKENS, 1, "class token and patch-token average concatenated "
            "(DINOv2's linear protocol)", needs_class_token=True, width=2),
]:
    register_pooling(_pooling)


def pooling_names() -> tuple[str, ...]:
    """The registered poolings, read when asked (so a pooling registered later is included);
    ``gridK`` for any K >= 1 is accepted too."""
    return tuple(POOLING_REGISTRY)


def get_pooling(name: str) -> Pooling:
    """The registry entry for ``name`` (``gridK`` for any K >= 1); one-line error otherwise."""
    entry = POOLING_REGISTRY.get(name)
    if entry is not None:
        return entry
    match = _GRID.match(str(name))
    if match:
        k = int(match.group(1))
        if k < 1:
            raise TransferlabError(f"pooling {name!r}: a grid needs at least one cell per side (grid1, grid2, ...)")
        return Pooling(name, lambda g, p, w, k=k: grid_pool(g, k), _SPATIAL, k, f"{k}x{k} max cells, row-major",
                       width=k * k)
    raise TransferlabError(f"unknown pooling {name!r}; choose from {', '.join(pooling_names())} (or gridK, K >= 1)")


def validate_pooling(name: str) -> str:
    get_pooling(name)
    return name


def pooling_fineness(name: str) -> int | None:
    """Spatial fineness of a pooling (None for an unknown name)."""
    try:
        return get_pooling(name).fineness
    except TransferlabError:
        return None


def pooling_applies(layer: LayerLike, name: str) -> bool:
    return get_pooling(name).applies(layer)


def check_pooling(layer: LayerLike, name: str, source: str = "") -> None:
    """Raise the one-line error naming the layer and the pooling when ``layer`` cannot give it."""
    entry = get_pooling(name)
    if not entry.applies(layer):
        of = f" of {source}" if source else ""
        raise TransferlabError(f"layer {layer.name}{of} cannot give pooling {name!r}: {entry.why_not(layer)}")


def poolings_for(layer: LayerLike, names: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The poolings of ``names`` (default: every registered one) that ``layer`` can give."""
    return [n for n in (names if names is not None else pooling_names()) if get_pooling(n).applies(layer)]


def as_grid(x: torch.Tensor, layer: LayerLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A hooked output as (B, C, H, W) (a view: nothing is copied) plus its prefix tokens
    (B, P, C) for token layers; vectors come back as they are."""
    if layer.kind == "vector":
        return x, None
    if layer.kind == "tokens":
        if layer.grid is None:
            raise TransferlabError(f"token layer {layer.name} has no patch grid")
        h, w = layer.grid
        p = layer.prefix_tokens
        if x.dim() != 3 or x.shape[1] != p + h * w:
            raise TransferlabError(f"layer {layer.name}: expected (B, {p}+{h}x{w}, C) tokens, got {tuple(x.shape)}")
        patches = x[:, p:].reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)
        return patches, (x[:, :p] if p else None)
    if layer.layout == "NHWC":
        return x.permute(0, 3, 1, 2), None
    return x, None


def pool_layer(x: torch.Tensor, layer: LayerLike, name: str, windows: list | None = None) -> torch.Tensor:
    """Apply the named pooling to a hooked output of ``layer`` (any kind)."""
    grid, prefix = as_grid(x, layer)
    return pool_grid(grid, prefix, layer, name, windows)


def pool_grid(grid: torch.Tensor, prefix: torch.Tensor | None, layer: LayerLike, name: str,
              windows: list | None = None) -> torch.Tensor:
    """``pool_layer`` on an output already laid out by ``as_grid`` (done once per layer)."""
    entry = get_pooling(name)
    check_pooling(layer, name)
    if layer.kind == "vector":
        return grid  # avg/max of a vector is the vector
    return entry.function(grid, prefix, windows if windows is not None else default_windows())


class _MapLayer:
    """Layer metadata inferred from a bare tensor (maps (B, C, H, W) and vectors (B, C))."""

    def __init__(self, x: torch.Tensor):
        if x.dim() not in (2, 4):
            raise TransferlabError(f"cannot pool a layer output of shape {tuple(x.shape)}")
        self.name = "layer"
        self.channels = int(x.shape[1])
        self.kind = "map" if x.dim() == 4 else "vector"
        self.layout = "NCHW" if x.dim() == 4 else "NC"
        self.grid: tuple[int, int] | None = (int(x.shape[2]), int(x.shape[3])) if x.dim() == 4 else None
        self.prefix_tokens = 0
        self.class_token = False


def pool(x: torch.Tensor, name: str, windows: list | None = None) -> torch.Tensor:
    """Apply the named pooling to a (B, C, H, W) map or a (B, C) vector."""
    get_pooling(name)
    layer = _MapLayer(x)
    if not get_pooling(name).applies(layer):
        raise TransferlabError(f"pooling {name!r} needs a spatial layer; this layer is a vector (use avg)")
    return pool_layer(x, layer, name, windows)


def pooled_shape(channels: int, spatial: bool | str, name: str, n_windows: int | None = None) -> tuple[int, ...]:
    """Shape of one image's pooled vector, known before any forward pass. ``spatial`` is the
    layer kind (``map``/``tokens``/``vector``; True/False mean map/vector)."""
    entry = get_pooling(name)
    kind = spatial if isinstance(spatial, str) else ("map" if spatial else "vector")
    if kind not in entry.kinds:
        if kind == "vector":
            raise TransferlabError(f"pooling {name!r} needs a spatial layer; this layer is a vector (use avg)")
        raise TransferlabError(f"pooling {name!r} does not apply to a {kind} layer")
    if entry.per_window:
        return (n_windows or len(default_windows()), channels)
    return (channels * entry.width,)


def layer_pooled_shape(layer: LayerLike, name: str, n_windows: int | None = None) -> tuple[int, ...]:
    check_pooling(layer, name)
    return pooled_shape(layer.channels, layer.kind, name, n_windows)
