"""The two source-network families of the paper, trainable from scratch at any width.

* ``alexnet``: 8 layers, conv1..conv5 + fc6, fc7, fc8 (max-pool after conv1, conv2, conv5).
* ``vgg16``: 16 layers, 13 convs in 5 blocks (max-pool after each block) + fc6, fc7, fc8.

Widths multiply the channel counts of every conv and the size of fc6/fc7 (``large`` is the
standard network). The AlexNet stem adapts to the input resolution so small CPU-friendly
inputs still leave a spatial pool5 (see ``alexnet_stem``); VGG needs no adaptation because
its convs are stride 1 and only its five 2x2 pools shrink the map (32 px -> 1x1 pool5).

Every representation the paper reads is a named module whose output is the post-ReLU (or
post-pool) activation: ``features.pool1`` ... ``features.pool5``, ``features.conv3``, ``fc6``,
``fc7``. All ReLUs are out of place, so a hooked output is never overwritten later.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.base import FEATURES_OUTPUT

WIDTHS: dict[str, float] = {"tiny": 1 / 8, "small": 1 / 4, "medium": 1 / 2, "large": 1.0}
# Standard (large) widths: conv channels per layer (AlexNet) or per block (VGG16), fc6/fc7 size.
BASE_CONV: dict[str, tuple[int, ...]] = {
    "alexnet": (96, 256, 384, 384, 256),
    "vgg16": (64, 128, 256, 512, 512),
}
BASE_FC = 4096
VGG16_BLOCKS = (2, 2, 3, 3, 3)  # convs per block
MIN_RESOLUTION: dict[str, int] = {"alexnet": 32, "vgg16": 32}
ARCHITECTURES = tuple(BASE_CONV)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a trained network (stored in ``source.json``)."""

    arch: str
    width: str
    resolution: int
    num_classes: int
    batch_norm: bool = True
    dropout: float = 0.5

    def __post_init__(self) -> None:
        validate_arch(self.arch, self.width, self.resolution)
        if self.num_classes < 2:
            raise TransferlabError(f"a source network needs at least 2 classes, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise TransferlabError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArchSpec:
        return cls(
            arch=str(data["arch"]),
            width=str(data["width"]),
            resolution=int(data["resolution"]),
            num_classes=int(data["num_classes"]),
            batch_norm=bool(data.get("batch_norm", True)),
            dropout=float(data.get("dropout", 0.5)),
        )


def validate_arch(arch: str, width: str, resolution: int) -> None:
    """Clear errors for an unknown family, unknown width or a too-small input."""
    if arch not in BASE_CONV:
        raise TransferlabError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if width not in WIDTHS:
        raise TransferlabError(f"unknown width {width!r}; choose from {', '.join(WIDTHS)}")
    if resolution < MIN_RESOLUTION[arch]:
        raise TransferlabError(
            f"resolution {resolution} px is too small for {arch}: the minimum is {MIN_RESOLUTION[arch]} px"
        )


def widths(arch: str, width: str) -> tuple[tuple[int, ...], int]:
    """Conv channels (per layer for AlexNet, per block for VGG16) and fc6/fc7 size."""
    factor = WIDTHS[width]
    convs = tuple(max(4, round(c * factor)) for c in BASE_CONV[arch])
    return convs, max(16, round(BASE_FC * factor))


def alexnet_stem(resolution: int) -> tuple[int, int, int]:
    """conv1 (kernel, stride, padding) for an input of ``resolution`` px.

    >= 128 px: the ImageNet stem, 11x11 stride 4 (224 px -> pool5 6x6);
    64-127 px: 7x7 stride 2; 32-63 px: 5x5 stride 1 (32 px -> pool5 3x3)."""
    if resolution >= 128:
        return 11, 4, 2
    if resolution >= 64:
        return 7, 2, 3
    return 5, 1, 2


def representation_layers(arch: str) -> list[str]:
    """Hookable layers bottom to top; the top one (fc7) is ``forward_features``'s output."""
    if arch == "alexnet":
        return ["features.pool1", "features.pool2", "features.conv3", "features.conv4",
                "features.pool5", "fc6", FEATURES_OUTPUT]
    return [f"features.pool{i}" for i in range(1, 6)] + ["fc6", FEATURES_OUTPUT]


def _conv(cin: int, cout: int, kernel: int, stride: int, padding: int, batch_norm: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, kernel, stride, padding, bias=not batch_norm))]
    if batch_norm:
        layers.append(("bn", nn.BatchNorm2d(cout)))
    layers.append(("relu", nn.ReLU(inplace=False)))
    return nn.Sequential(OrderedDict(layers))


def _fc(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("linear", nn.Linear(cin, cout)), ("relu", nn.ReLU(inplace=False))]))


def _alexnet_features(spec: ArchSpec) -> nn.Sequential:
    c1, c2, c3, c4, c5 = widths("alexnet", spec.width)[0]
    kernel, stride, padding = alexnet_stem(spec.resolution)
    bn = spec.batch_norm
    return nn.Sequential(OrderedDict([
        ("conv1", _conv(3, c1, kernel, stride, padding, bn)),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", _conv(c1, c2, 5, 1, 2, bn)),
        ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", _conv(c2, c3, 3, 1, 1, bn)),
        ("conv4", _conv(c3, c4, 3, 1, 1, bn)),
        ("conv5", _conv(c4, c5, 3, 1, 1, bn)),
        ("pool5", nn.MaxPool2d(3, 2)),
    ]))


def _vgg16_features(spec: ArchSpec) -> nn.Sequential:
    channels = widths("vgg16", spec.width)[0]
    layers: list[tuple[str, nn.Module]] = []
    cin = 3
    for block, (cout, count) in enumerate(zip(channels, VGG16_BLOCKS, strict=True), start=1):
        for k in range(1, count + 1):
            layers.append((f"conv{block}_{k}", _conv(cin, cout, 3, 1, 1, spec.batch_norm)))
            cin = cout
        layers.append((f"pool{block}", nn.MaxPool2d(2, 2)))
    return nn.Sequential(OrderedDict(layers))


class ConvNet(nn.Module):
    """features (convs + pools) -> avgpool to the training pool5 size -> fc6 -> fc7 -> fc8.

    The adaptive pool is the identity at the training resolution and lets other input
    sizes through (as torchvision's AlexNet/VGG do)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.features = _alexnet_features(spec) if spec.arch == "alexnet" else _vgg16_features(spec)
        channels, fc = widths(spec.arch, spec.width)
        with torch.no_grad():
            side = int(self.features(torch.zeros(1, 3, spec.resolution, spec.resolution)).shape[-1])
        if side < 1:  # unreachable above the minimum resolution; kept as a guard
            raise TransferlabError(f"resolution {spec.resolution} leaves no pool5 map for {spec.arch}")
        self.pool5_size = side
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        self.fc6 = _fc(channels[-1] * side * side, fc)
        self.drop6 = nn.Dropout(spec.dropout)
        self.fc7 = _fc(fc, fc)
        self.drop7 = nn.Dropout(spec.dropout)
        self.fc8 = nn.Linear(fc, spec.num_classes)
        self.num_classes = spec.num_classes
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_head(self, forward_features(self, x))


def forward_features(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Input -> fc7 after its ReLU (the paper's last representation, layer -1)."""
    x = torch.flatten(model.avgpool(model.features(x)), 1)
    return model.fc7(model.drop6(model.fc6(x)))


def forward_head(model: Any, top: torch.Tensor) -> torch.Tensor:
    """fc7 -> source-class logits (fc8)."""
    return model.fc8(model.drop7(top))


def _init_weights(model: Any) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    nn.init.normal_(model.fc8.weight, 0.0, 0.01)  # small logits at the start: loss ~ log(classes)


def build_network(spec: ArchSpec) -> ConvNet:
    return ConvNet(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
