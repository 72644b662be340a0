"""A source network: a model, its preprocessing and its ordered representation layers.

Layers are listed bottom to top. The paper counts from the top: ``-1`` is the last
representation (the pre-logits one), ``-2`` the one below it, and so on; absolute module
names are accepted too. The top layer may be the output of ``forward_features`` (named
``features``) rather than a hooked module, so any timm model works without knowing which
module produces its final map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.preprocessing import Preprocessing

FEATURES_OUTPUT = "features"


@dataclass(frozen=True)
class Layer:
    """One representation layer: a module path (or ``features``) with its output shape."""

    name: str
    channels: int
    stride: int | None  # None for vector (fully connected) layers
    index: int = 0  # counted from the top: -1 is the last representation

    @property
    def spatial(self) -> bool:
        return self.stride is not None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "channels": self.channels, "stride": self.stride}


@dataclass
class Source:
    """A loaded source network, ready for extraction.

    ``forward_features(model, x)`` returns the top representation (a map for ConvNets);
    ``forward_head(model, top)`` turns it into source-class logits (None without a classifier).
    """

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
        probe = Source(self.name, self.model, self.preprocessing, [name, FEATURES_OUTPUT], self.forward_features)
        found = probe_layers(probe, keep_all=True)[0]
        return Layer(found.name, found.channels, found.stride, index=0)

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
            "layers": [layer.to_dict() for layer in self.layers],
        }


def named_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise TransferlabError(f"model has no module {name!r}") from None


@torch.inference_mode()
def probe_layers(source: Source, keep_all: bool = False) -> list[Layer]:
    """Run one image through the model to learn each layer's channels and stride."""
    size = source.preprocessing.input_size
    model = source.model
    device = next(model.parameters()).device
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in source.layer_names:
        if name == FEATURES_OUTPUT:
            continue

        def hook(_m, _i, output, name=name):
            shapes[name] = tuple(output.shape)

        handles.append(named_module(model, name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        top = source.forward_features(model, torch.zeros(1, 3, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    shapes[FEATURES_OUTPUT] = tuple(top.shape)
    layers = []
    count = len(source.layer_names)
    for position, name in enumerate(source.layer_names):
        shape = shapes[name]
        if len(shape) == 4:
            stride = 2 ** max(0, round(math.log2(size / shape[-1])))
        elif len(shape) == 2:
            stride = None
        else:
            raise TransferlabError(
                f"layer {name} of {source.name} outputs shape {shape}; only ConvNet maps "
                "(N, C, H, W) and vectors (N, C) are supported"
            )
        layers.append(Layer(name=name, channels=shape[1], stride=stride, index=position - count))
    return layers if keep_all else _stage_ends(layers)


def _stage_ends(layers: list[Layer]) -> list[Layer]:
    """Keep the last layer of each run with the same (channels, stride): the paper's
    "layers" are stage outputs, not every block inside a stage. Re-index from the top."""
    kept = [layer for i, layer in enumerate(layers)
            if i == len(layers) - 1 or not layer.spatial or (layers[i + 1].channels, layers[i + 1].stride) != (layer.channels, layer.stride)]
    return [Layer(layer.name, layer.channels, layer.stride, index=i - len(kept)) for i, layer in enumerate(kept)]
