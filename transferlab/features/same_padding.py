"""TensorFlow "same" convolutions without the padding copy, for inference.

timm's ``Conv2dSame`` (the ``tf_*`` ports: EfficientNet-Lite, MobileNet, MixNet...) pads its
input with ``F.pad`` before every strided convolution, because TF pads one pixel more on the
right / bottom than on the left / top. That copy of the whole feature map costs more than the
depthwise convolution itself (EfficientNet-Lite0 on 2 cores, batch 32: 42 ms to pad the
96 x 112 x 112 map against 13 ms for the convolution).

The same output comes from one convolution with symmetric padding: when the TF padding is
(p, p + 1) along an axis, a kernel with one extra leading tap of weight 0 and symmetric
padding p + 1 reads exactly the same input pixels with the same weights
(``sum_k w'[k] x[s i - (p + 1) + k] = sum_k w[k] x[s i - p + k]`` for ``w' = [0, w]``), and
gives the same output size. The extra tap multiplies real pixels by 0.0, so the sums are
the padded convolution's up to accumulation order. Used for depthwise and few-input-channel
convolutions (where the copy dominates); dilated ones keep timm's path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.features.replace import replace_module

# A dense convolution with more input channels than this keeps the padding copy: its extra
# tap costs more arithmetic than the copy saves.
_DENSE_MAX_CHANNELS = 4


def _tf_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class AlignedSameConv2d(nn.Conv2d):
    """A ``Conv2dSame`` computed as one symmetric-padded convolution (see the module docstring).

    Shares the original's weight and bias. The widened kernel is built once per input size
    and weights version.
    """

    def __init__(self, conv: nn.Conv2d):
        kernel, stride, dilation = (cast(tuple[int, int], v) for v in (conv.kernel_size, conv.stride, conv.dilation))
        super().__init__(conv.in_channels, conv.out_channels, kernel, stride, 0, dilation,
                         conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias
        self._plans: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = {}

    def symmetric_plan(self, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """(widened weight, symmetric padding) for an input of this size."""
        w = self.weight
        key = (height, width, w._version, w.data_ptr(), w.dtype, w.device, w.is_contiguous())
        plan = self._plans.get(key)
        if plan is None:
            (top, bottom), (left, right) = (_tf_padding(size, k, s) for size, k, s in
                                            zip((height, width), self.kernel_size, self.stride, strict=True))
            with torch.no_grad():
                wide = F.pad(w, (right - left, 0, bottom - top, 0))  # a leading zero tap where TF pads unevenly
                if w.is_contiguous(memory_format=torch.channels_last):
                    wide = wide.contiguous(memory_format=torch.channels_last)
            plan = (wide, (bottom, right))
            self._plans = {key: plan}
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = self.symmetric_plan(x.shape[-2], x.shape[-1])
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def _same_conv_class() -> type | None:
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # timm is a dependency; a model without it has no such layers
        return None
    return Conv2dSame


def alignable(model: nn.Module, keep: Iterable[str] = ()) -> list[str]:
    """Names of the ``Conv2dSame`` layers ``align_same_padding`` would replace."""
    same = _same_conv_class()
    if same is None:
        return []
    keep = set(keep)
    return [name for name, module in model.named_modules()
            if type(module) is same and isinstance(module, nn.Conv2d) and name not in keep
            and module.dilation == (1, 1)
            and (module.groups == module.in_channels or module.in_channels <= _DENSE_MAX_CHANNELS)]


def align_same_padding(model: nn.Module, keep: Iterable[str] = ()) -> int:
    """Replace, in place, the ``Conv2dSame`` layers of ``model`` that gain from it; how many."""
    names = alignable(model, keep)
    for name in names:
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)  # alignable lists Conv2d subclasses only
        replace_module(model, name, AlignedSameConv2d(conv))
    return len(names)
