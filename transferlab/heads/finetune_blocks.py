"""Which parameters fine-tuning trains: the whole network or its top K blocks.

A *block* is what the network computes between two consecutive representation layers of the
source (``source.layers``, bottom to top, the top one being the ``forward_features`` output).
Block ``i`` holds every module that runs after layer ``i-1`` has produced its output and no
later than layer ``i`` (the bottom block also holds the stem). "Top K blocks" therefore means:
everything computed after the output of layer ``-(K+1)``. For a timm ResNet (layers act1,
layer1, layer2, layer3, features) K=1 trains ``layer4``; for an EfficientNet K=1 trains
``conv_head``/``bn2``, K=2 adds ``blocks.6``; for VGG/AlexNet K=1 trains fc7, K=2 fc6+fc7.
For a ViT (layers blocks.0 ... blocks.11, features) K=1 trains the final norm, K=2 adds
``blocks.11``; the top layer ``pre_logits`` (a norm or attention pool after the pooling, as in
BEiT/EVA/"gap" ViTs) is a block of its own. Parameters of the model itself rather than of a
submodule (a ViT's class/register tokens and position embedding) are used at the bottom and
belong to the bottom block, so they train with the whole network.
The assignment comes from the order in which modules finish during one dry forward pass, so
it needs no per-architecture table. Parameters that ``forward_features`` never uses (the
source-task classifier) are never trained.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.base import FEATURES_OUTPUT, PRE_LOGITS, Source


@dataclass
class BlockPlan:
    """The outcome of the block rule for one source and one ``blocks`` value."""

    trainable: list[str]  # parameter names that train
    frozen_norms: list[str]  # BatchNorm modules kept in eval mode while training
    block_of_module: dict[str, int]  # module name -> index into source.layers
    layer_names: list[str]  # source.layers names, bottom to top
    blocks: int | None

    def describe(self) -> str:
        if self.blocks is None:
            return "whole network"
        if self.blocks == 0:
            return "heads only (network frozen)"
        return f"top {self.blocks} block(s): " + ", ".join(self.layer_names[-self.blocks:])


def module_blocks(source: Source) -> dict[str, int]:
    """For every module that runs in ``forward_features``: the index (into ``source.layers``)
    of the block it belongs to, from the order in which modules finish in a dry forward."""
    layers = source.layers
    model = source.model
    counter = itertools.count()
    finished: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, _o, name=name):
            finished.setdefault(name, next(counter))

        handles.append(module.register_forward_hook(hook))
    size = source.preprocessing.input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            top = source.forward_features(model, torch.zeros(1, 3, size, size, device=device))
            end = next(counter)
            if layers[-1].name == PRE_LOGITS and source.pre_logits is not None:
                source.pre_logits(model, top)  # its modules (fc_norm, attn_pool) finish after `end`
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    after = next(counter)
    bounds = []
    for layer in layers:
        if layer.name == FEATURES_OUTPUT:
            bounds.append(end)
        elif layer.name == PRE_LOGITS:
            bounds.append(after)
        elif layer.name in finished:
            bounds.append(finished[layer.name])
        else:
            raise TransferlabError(f"layer {layer.name} of {source.name} did not run in forward_features")
    out: dict[str, int] = {}
    for name, step in finished.items():
        out[name] = next((i for i, bound in enumerate(bounds) if step <= bound), len(bounds) - 1)
    return out


def plan_blocks(source: Source, blocks: int | None) -> BlockPlan:
    """Apply the block rule: ``None`` = whole network, ``K`` = the top K blocks, ``0`` = none
    (only the new heads train)."""
    layers = source.layers
    names = [layer.name for layer in layers]
    if blocks is not None and not 0 <= blocks <= len(layers):
        raise TransferlabError(
            f"blocks must be between 0 (heads only) and {len(layers)} (whole network) for source "
            f"{source.name}, whose representation layers are {', '.join(names)}; got {blocks}"
        )
    owner = module_blocks(source)
    first = 0 if blocks is None else len(layers) - blocks
    trainable_modules = {name for name, block in owner.items() if block >= first}
    trainable: list[str] = []
    if first == 0:  # the model's own parameters (cls_token, pos_embed) feed the bottom block
        trainable.extend(name for name, _ in source.model.named_parameters(recurse=False))
    for module_name, module in source.model.named_modules():
        if module_name not in trainable_modules:
            continue
        for param_name, _ in module.named_parameters(recurse=False):
            trainable.append(f"{module_name}.{param_name}")
    frozen_norms = [
        name for name, module in source.model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in trainable_modules
    ]
    return BlockPlan(trainable, frozen_norms, owner, names, blocks)


def apply_plan(model: nn.Module, plan: BlockPlan) -> list[nn.Parameter]:
    """Set ``requires_grad`` from the plan (sources load with every parameter frozen) and
    return the parameters to optimise."""
    wanted = set(plan.trainable)
    params = []
    for name, param in model.named_parameters():
        train = name in wanted
        param.requires_grad_(train)
        if train:
            params.append(param)
    return params


def set_train_mode(model: nn.Module, plan: BlockPlan) -> None:
    """Training mode, except BatchNorm of frozen parts, which keeps its running statistics."""
    model.train()
    for name in plan.frozen_norms:
        model.get_submodule(name).eval()
