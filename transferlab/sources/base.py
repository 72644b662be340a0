"""A source network: a model, its preprocessing and its ordered representation layers.

Layers are listed bottom to top. The paper counts from the top: ``-1`` is the last
representation (the pre-logits one), ``-2`` the one below it, and so on; absolute module
names are accepted too. The top layer may be the output of ``forward_features`` (named
``features``) rather than a hooked module, so any timm model works without knowing which
module produces its final map. When the model's head does more than a parameter-free pooling
of that output (a norm after the pooling, an attention pool), the top layer is
``pre_logits``: the vector ``forward_head(..., pre_logits=True)`` returns.

A layer is one of three kinds (``features.pooling.LAYER_KINDS``): a ``map`` (ConvNets,
(N, C, H, W), or channels-last (N, H, W, C) as Swin's stages), ``tokens`` (transformers,
(N, T, C): prefix tokens such as the class and register tokens, then the patch grid) or a
``vector`` (N, C).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.preprocessing import Preprocessing

FEATURES_OUTPUT = "features"
PRE_LOGITS = "pre_logits"  # computed from the features output by the model's own head
DERIVED_OUTPUTS = (FEATURES_OUTPUT, PRE_LOGITS)  # layers that are not hooked modules


@dataclass(frozen=True)
class Layer:
    """One representation layer: a module path (or ``features``/``pre_logits``) with its
    output shape. ``stride`` is input pixels per map cell or patch (None for vectors);
    token layers carry their patch ``grid`` and how many prefix tokens precede it."""

    name: str
    channels: int
    stride: int | None  # None for vector (fully connected) layers
    index: int = 0  # counted from the top: -1 is the last representation
    kind: str = ""  # map | tokens | vector ("" = inferred from stride)
    layout: str = ""  # NCHW | NHWC | NTC | NC
    grid: tuple[int, int] | None = None  # (H, W) of the map or patch grid
    prefix_tokens: int = 0  # tokens before the patch grid (class, registers, distillation)
    class_token: bool = False  # the first prefix token is a class token

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "map" if self.stride is not None else "vector")
        if not self.layout:
            object.__setattr__(self, "layout", {"map": "NCHW", "tokens": "NTC", "vector": "NC"}[self.kind])

    @property
    def spatial(self) -> bool:
        """Has a spatial grid (maps and token layers): spatial poolings apply."""
        return self.kind != "vector"

    def at_index(self, index: int) -> Layer:
        return replace(self, index=index)

    def describe_grid(self) -> str:
        """``14x14+1`` for a token layer (patch grid + prefix tokens), ``7x7`` for a map."""
        if self.grid is None:
            return "-"
        text = f"{self.grid[0]}x{self.grid[1]}"
        return text + (f"+{self.prefix_tokens}" if self.kind == "tokens" and self.prefix_tokens else "")

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "channels": self.channels, "stride": self.stride,
                "kind": self.kind, "layout": self.layout, "grid": list(self.grid) if self.grid else None,
                "prefix_tokens": self.prefix_tokens, "class_token": self.class_token}


@dataclass(frozen=True)
class TokenFormat:
    """How a transformer lays out its token sequence: ``prefix_tokens`` leading tokens (the
    class token first when ``class_token``, then register/distillation tokens), then the
    patch tokens row-major on a grid of ``patch_size`` pixels per patch."""

    prefix_tokens: int = 0
    class_token: bool = False
    patch_size: tuple[int, int] | None = None


@dataclass
class Source:
    """A loaded source network, ready for extraction.

    ``forward_features(model, x)`` returns the top representation (a map for ConvNets, tokens
    for transformers); ``forward_head(model, top)`` turns it into source-class logits (None
    without a classifier). ``head_pooling`` is how the model's own head pools the top layer
    (``cls`` for class-token transformers, ``avg`` otherwise); when the head does more than
    that, ``pre_logits(model, top)`` gives its pre-logits vector (layer ``pre_logits``) and
    ``classifier(model, vector)`` the logits from it."""

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    layer_names: list[str]
    forward_features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    forward_head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    weights_id: str = "random-init"
    arch: str = ""
    num_classes: int = 0
    class_names: list[str] | None = None
    info: dict = field(default_factory=dict)
    tokens: TokenFormat | None = None  # token-sequence layers: their prefix and patch size
    map_layout: str = "NCHW"  # NHWC for channels-last models (Swin)
    head_pooling: str = "avg"
    pre_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    classifier: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    _layers: list[Layer] | None = field(default=None, repr=False)

    # -- layers -------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """Layers bottom to top, with channels and stride measured by one dry forward."""
        if self._layers is None:
            self._layers = probe_layers(self)
        return self._layers

    def resolve_layers(self, specs: Sequence[str | int]) -> list[Layer]:
        """Map ``-1``/``-2``/... or module names to layers; errors name the bad value."""
        layers = self.layers
        by_name = {layer.name: layer for layer in layers}
        out: list[Layer] = []
        for spec in specs:
            text = str(spec).strip()
            try:
                index = int(text)
            except ValueError:
                layer = by_name.get(text) or self._module_layer(text)
            else:
                if index >= 0 or -index > len(layers):
                    raise TransferlabError(
                        f"layer index {index} out of range for source {self.name}: "
                        f"use -1 (top) .. -{len(layers)}"
                    )
                layer = layers[index]
            if layer not in out:
                out.append(layer)
        return out

    def _module_layer(self, name: str) -> Layer:
        """Any module of the model, by its absolute name (shape learned by one dry forward)."""
        try:
            self.model.get_submodule(name)
        except AttributeError:
            raise TransferlabError(
                f"source {self.name} has no layer {name!r}; layers: "
                + ", ".join(layer.name for layer in self.layers)
                + " (or any module name of the model)"
            ) from None
        probe = replace(self, layer_names=[name, FEATURES_OUTPUT], _layers=None)
        return probe_layers(probe, keep_all=True)[0].at_index(0)

    # -- the model's own head ---------------------------------------------------------------
    @property
    def top_layer(self) -> Layer:
        return self.layers[-1]

    def head_vector(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The pre-logits vector of images ``x``: the top layer pooled as the head pools it
        (what fine-tuning puts its new heads on)."""
        top = self.forward_features(model, x)
        if self.pre_logits is not None and self.layer_names[-1] == PRE_LOGITS:
            return self.pre_logits(model, top).float()
        return head_pool(top.float(), describe_output(FEATURES_OUTPUT, tuple(top.shape), self.preprocessing.input_size,
                                                      self), self.head_pooling)

    def logits_from_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """Source-class logits from the top layer pooled with ``head_pooling`` (or from the
        ``pre_logits`` vector): the model's own classifier, no new forward pass."""
        if self.classifier is not None:
            return self.classifier(self.model, vector)
        if self.forward_head is None:
            raise TransferlabError(f"source {self.name} has no classifier")
        top = self.top_layer
        if top.kind == "map":
            return self.forward_head(self.model, vector[:, :, None, None])
        return self.forward_head(self.model, vector)

    def to(self, device: torch.device | str) -> Source:
        self.model.to(device)
        return self

    def describe(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "weights": self.weights_id,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "head_pooling": self.head_pooling,  # how the model's own head pools layer -1
            "layers": [layer.to_dict() for layer in self.layers],
        }


def named_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise TransferlabError(f"model has no module {name!r}") from None


@torch.inference_mode()
def probe_layers(source: Source, keep_all: bool = False) -> list[Layer]:
    """Run one image through the model to learn each layer's kind, channels, grid and stride."""
    size = source.preprocessing.input_size
    model = source.model
    device = next(model.parameters()).device
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in source.layer_names:
        if name in DERIVED_OUTPUTS:
            continue

        def hook(_m, _i, output, name=name):
            shapes[name] = tuple(output.shape)

        handles.append(named_module(model, name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        top = source.forward_features(model, torch.zeros(1, 3, size, size, device=device))
        shapes[FEATURES_OUTPUT] = tuple(top.shape)
        if PRE_LOGITS in source.layer_names and source.pre_logits is not None:
            shapes[PRE_LOGITS] = tuple(source.pre_logits(model, top).shape)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return layers_from_shapes(source, shapes, size, keep_all)


def layers_from_shapes(source: Source, shapes: dict[str, tuple[int, ...]], size: int,
                       keep_all: bool = False) -> list[Layer]:
    """Layers from the output shapes of one dry forward at ``size`` px (bottom to top)."""
    count = len(source.layer_names)
    layers = [describe_output(name, shapes[name], size, source).at_index(position - count)
              for position, name in enumerate(source.layer_names)]
    return layers if keep_all else _stage_ends(layers)


class OutputFormat(Protocol):
    """What ``describe_output`` reads of a source (a Source, or an adapter's stand-in while
    the Source is being built)."""

    @property
    def name(self) -> str: ...
    @property
    def tokens(self) -> TokenFormat | None: ...
    @property
    def map_layout(self) -> str: ...


def describe_output(name: str, shape: tuple[int, ...], size: int, source: OutputFormat) -> Layer:
    """The Layer for an output of ``shape`` given an input of ``size`` px: a vector (N, C),
    tokens (N, T, C) or a map, (N, C, H, W) or channels-last (N, H, W, C) for NHWC models."""
    if len(shape) == 2:
        return Layer(name, shape[1], None, kind="vector", layout="NC")
    if len(shape) == 3:
        fmt = source.tokens or TokenFormat()
        grid = _token_grid(shape[1] - fmt.prefix_tokens, size, fmt.patch_size)
        if grid is None and fmt.prefix_tokens and _token_grid(shape[1], size, fmt.patch_size):
            fmt = TokenFormat(0, False, fmt.patch_size)  # before the prefix tokens join (patch_embed)
            grid = _token_grid(shape[1], size, fmt.patch_size)
        if grid is None:
            raise TransferlabError(
                f"layer {name} of {source.name} outputs shape {shape}: {shape[1]} tokens with "
                f"{fmt.prefix_tokens} prefix token(s) do not form a patch grid for a {size} px input")
        stride = max(1, round(size / grid[1]))
        return Layer(name, shape[2], stride, kind="tokens", layout="NTC", grid=grid,
                     prefix_tokens=fmt.prefix_tokens, class_token=fmt.class_token and fmt.prefix_tokens > 0)
    if len(shape) == 4:
        if source.map_layout == "NHWC" and shape[1] == shape[2]:
            h, w, channels, layout = shape[1], shape[2], shape[3], "NHWC"
        else:
            h, w, channels, layout = shape[2], shape[3], shape[1], "NCHW"
        stride = 2 ** max(0, round(math.log2(size / w)))
        return Layer(name, channels, stride, kind="map", layout=layout, grid=(h, w))
    raise TransferlabError(
        f"layer {name} of {source.name} outputs shape {shape}; supported: maps (N, C, H, W) or (N, H, W, C), "
        "tokens (N, T, C) and vectors (N, C)")


def _token_grid(patches: int, size: int, patch_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if patches < 1:
        return None
    if patch_size:
        grid = (size // patch_size[0], size // patch_size[1])
        if grid[0] * grid[1] == patches:
            return grid
    side = math.isqrt(patches)
    return (side, side) if side * side == patches else None


def head_pool(top: torch.Tensor, layer: Layer, pooling: str) -> torch.Tensor:
    """The parameter-free poolings a model head may apply to its top layer (``cls``, ``avg``,
    ``max`` over patch tokens or map cells); vectors are already pooled. The same arithmetic
    as ``features.pooling`` (tested equal), kept here so sources need nothing above them."""
    if layer.kind == "vector":
        return top
    if layer.kind == "tokens":
        if pooling == "cls":
            return top[:, 0]
        patches = top[:, layer.prefix_tokens:]
        return patches.mean(dim=1) if pooling == "avg" else patches.amax(dim=1)
    dims = (1, 2) if layer.layout == "NHWC" else (2, 3)
    return top.mean(dim=dims) if pooling == "avg" else top.amax(dim=dims)


def _stage_ends(layers: list[Layer]) -> list[Layer]:
    """Keep the last map layer of each run with the same (channels, stride): the paper's
    ConvNet "layers" are stage outputs, not every block inside a stage. Every transformer
    block (token layer) and every vector layer is kept. Re-index from the top."""
    def stage(layer: Layer) -> tuple:
        return (layer.kind, layer.channels, layer.stride)

    kept = [layer for i, layer in enumerate(layers)
            if i == len(layers) - 1 or layer.kind != "map" or stage(layers[i + 1]) != stage(layer)]
    return [layer.at_index(i - len(kept)) for i, layer in enumerate(kept)]
