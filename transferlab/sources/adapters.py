"""Adapters that give timm and torchvision models one interface: forward_features,
forward_head and an ordered list of representation layers (bottom to top).

The top representation is always what ``forward_features`` returns (named ``features``),
so ``-1``/``avg`` equals the model's own pre-logits vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.base import FEATURES_OUTPUT


@dataclass
class Adapter:
    layer_names: list[str]
    forward_features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    forward_head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None
    head_prefixes: tuple[str, ...]


# ---------------------------------------------------------------------------- timm
def timm_adapter(model: nn.Module) -> Adapter:
    names = _timm_stage_names(model)
    return Adapter(
        layer_names=names + [FEATURES_OUTPUT],
        forward_features=lambda m, x: m.forward_features(x),
        forward_head=lambda m, f: m.forward_head(f),
        head_prefixes=_timm_head_prefixes(model),
    )


def _timm_stage_names(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    # EfficientNet / MobileNet families: every stage of `blocks`, plus the stem.
    if "blocks" in modules and isinstance(modules["blocks"], nn.Sequential) and "conv_head" in modules:
        stem = ["bn1"] if "bn1" in modules else []
        return stem + [f"blocks.{i}" for i in range(len(modules["blocks"]))]
    info = getattr(model, "feature_info", None)
    if not info:
        raise TransferlabError(
            f"timm model {type(model).__name__} has no feature_info; only ConvNets with stages are supported"
        )
    names = [entry["module"] for entry in info if entry.get("module")]
    # The last stage usually *is* the forward_features output; keep it only if it differs.
    if names:
        names = _drop_if_same_as_features(model, names)
    return names


def _drop_if_same_as_features(model: nn.Module, names: list[str]) -> list[str]:
    captured: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(names[-1]).register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("last", out)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            size = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
            top = model.forward_features(torch.zeros(1, 3, size, size))
    finally:
        handle.remove()
        model.train(was_training)
    last = captured.get("last")
    if last is not None and last.shape == top.shape and torch.equal(last, top):
        return names[:-1]
    return names


def _timm_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    if isinstance(classifier, (list, tuple)):
        return tuple(f"{c}." for c in classifier)
    return (f"{classifier}.",)


# ---------------------------------------------------------------------- torchvision
def torchvision_adapter(name: str, model: nn.Module) -> Adapter:
    if name.startswith(("alexnet", "vgg")):
        return _fc_family(model)
    if hasattr(model, "features") and hasattr(model, "classifier"):
        return _features_classifier_family(model)
    if all(hasattr(model, attr) for attr in ("layer4", "fc", "avgpool")):
        return _resnet_family(model)
    raise TransferlabError(
        f"torchvision architecture {name!r} is not supported; use its timm version (timm:NAME)"
    )


def _features_classifier_family(model: nn.Module) -> Adapter:
    """mobilenet_v2/v3, efficientnet, convnext, densenet-like: `features` then pool+classifier."""
    count = len(model.features)
    names = [f"features.{i}" for i in range(count - 1)]

    def head(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
        pooled = m.avgpool(f) if hasattr(m, "avgpool") else nn.functional.adaptive_avg_pool2d(f, 1)
        if not _classifier_flattens(m.classifier):
            pooled = torch.flatten(pooled, 1)
        return m.classifier(pooled)

    return Adapter(names + [FEATURES_OUTPUT], lambda m, x: m.features(x), head, ("classifier.",))


def _classifier_flattens(classifier: nn.Module) -> bool:
    return any(isinstance(layer, nn.Flatten) for layer in classifier.modules())


def _fc_family(model: nn.Module) -> Adapter:
    """AlexNet / VGG: conv stages, pool5, then fc6 and fc7 (the paper's representations)."""
    feats = model.features
    names = [f"features.{i}" for i, layer in enumerate(feats) if isinstance(layer, nn.MaxPool2d)]
    relus = [i for i, layer in enumerate(model.classifier) if isinstance(layer, nn.ReLU)]
    if len(relus) < 2:
        raise TransferlabError("unexpected AlexNet/VGG classifier layout")
    fc6 = f"classifier.{relus[0]}"
    last_relu = relus[1]
    for layer in model.classifier:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False  # hooks must see fc6 before fc7 overwrites nothing

    def features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(m.avgpool(m.features(x)), 1)
        return m.classifier[: last_relu + 1](x)

    def head(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
        return m.classifier[last_relu + 1:](f)

    return Adapter(names + [fc6, FEATURES_OUTPUT], features, head, (f"classifier.{len(model.classifier) - 1}.",))


def _resnet_family(model: nn.Module) -> Adapter:
    def features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def head(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(f), 1))

    names = ["maxpool", "layer1", "layer2", "layer3", FEATURES_OUTPUT]
    return Adapter(names, features, head, ("fc.",))
