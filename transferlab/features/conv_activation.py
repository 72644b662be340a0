"""Convolution + ReLU / ReLU6 as one oneDNN call, for CPU inference.

Once BatchNorm is folded (``features.fold``), an inverted-residual block is convolution,
then ReLU6, then the next convolution. On CPU the activation is a separate pass over the
whole feature map, and on a 2-core machine such a pass is memory-bound: about 12% of
EfficientNet-Lite0's forward. oneDNN applies the activation to each output tile while it
is still in cache (``torch.ops.mkldnn._convolution_pointwise``, the kernel torch.compile's
CPU backend emits for the same pattern). Same arithmetic, clamped in the kernel instead of
afterwards: outputs equal to the unfused pair up to accumulation order.

Only convolutions whose output nothing else reads are fused (the BatchNorm pairs of
``features.fold``, whose BatchNorm became the activation). On other devices or dtypes, with
autograd recording, or under torch.compile, the module runs the convolution and the
activation as two calls, as before.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.features.replace import replace_module

# activation module -> oneDNN post-op name and its scalars
_RELU6_BOUNDS = (0.0, 6.0)


def _post_op(act: nn.Module) -> tuple[str, list[float]] | None:
    if type(act) is nn.ReLU:
        return "relu", []
    if type(act) in (nn.ReLU6, nn.Hardtanh) and (act.min_val, act.max_val) == _RELU6_BOUNDS:  # type: ignore[attr-defined]
        return "hardtanh", list(_RELU6_BOUNDS)
    return None


def fusable_activation(module: nn.Module) -> nn.Module | None:
    """The activation a folded BatchNorm left behind (alone, or after an eval-time identity)."""
    parts = list(module) if isinstance(module, nn.Sequential) else [module]
    parts = [p for p in parts if not isinstance(p, (nn.Identity, nn.Dropout))]
    if len(parts) == 1 and _post_op(parts[0]) is not None:
        return parts[0]
    return None


def _conv_arguments(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, list[int]] | None:
    """(weight, symmetric padding) the plain convolution call would use, None if not plain."""
    plan = getattr(conv, "symmetric_plan", None)
    if plan is not None:
        weight, padding = plan(x.shape[-2], x.shape[-1])
        return weight, list(padding)
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv.weight, list(conv.padding)


class ConvActivation(nn.Module):
    """``act(conv(x))``, one fused oneDNN call on CPU float32 inference."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.act = conv, act
        post = _post_op(act)
        assert post is not None, "ConvActivation needs a ReLU or ReLU6"
        self._attr, self._scalars = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad))):
            args = _conv_arguments(self.conv, x)
            if args is not None:
                weight, padding = args
                conv = self.conv
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, conv.bias, padding, list(conv.stride), list(conv.dilation), conv.groups,
                    self._attr, self._scalars, "")
        return self.act(self.conv(x))


def fuse_conv_activations(model: nn.Module, pairs: list[tuple[str, str]]) -> int:
    """Replace, in place, each (conv, folded BatchNorm) pair whose BatchNorm is now a ReLU /
    ReLU6 by one ``ConvActivation``; how many. No-op where oneDNN is not built in."""
    if not torch.backends.mkldnn.is_available():
        return 0
    fused = 0
    for conv_name, bn_name in pairs:
        act = fusable_activation(model.get_submodule(bn_name))
        conv = model.get_submodule(conv_name)
        if act is None or not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            continue
        plain = type(conv) is nn.Conv2d and not isinstance(conv.padding, str)
        if not plain and getattr(conv, "symmetric_plan", None) is None:
            continue
        replace_module(model, conv_name, ConvActivation(conv, act))
        replace_module(model, bn_name, nn.Identity())
        fused += 1
    return fused
