"""Preprocessing stored with each source's weights (timm's idea): resize, centre crop, scale.

The same object builds the eval transform used for extraction and the train-time augmentation
used by fine-tuning, so a network never sees pixels prepared differently from its training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}
# names how ``to_pixels`` resamples; part of every feature-store key, so a change of recipe
# never mixes rows computed the old way with new ones
PIXEL_RECIPE = "pil-box-resample-v1"
_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a source wants its input: the short side is resized to ``input_size / crop_pct``,
    then a centre crop of ``input_size`` is taken and (x/255 - mean) / std applied."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            input_size=int(data["input_size"]),
            crop_pct=float(data["crop_pct"]),
            interpolation=str(data["interpolation"]),
            mean=_rgb(data["mean"], "mean"),
            std=_rgb(data["std"], "std"),
        )

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a ``width`` x ``height`` image that the eval transform keeps, in that
        image's pixel coordinates: torchvision's resize (short side to ``resize_size``, long
        side truncated) followed by its centre crop (offsets rounded half to even)."""
        short = self.resize_size
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top = int(round((new_h - self.input_size) / 2.0))
        left = int(round((new_w - self.input_size) / 2.0))
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + self.input_size) * sx, (top + self.input_size) * sy)

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """Eval geometry: PIL RGB image -> (S, S, 3) uint8, resized and centre-cropped.

        One PIL resample of just the kept region (``Image.resize(box=...)``) instead of
        resizing the whole image and cropping: the filter taps are the same, so pixels agree
        with resize-then-crop to within 1/255 from float rounding, at ~60% of the cost.
        Nearest-neighbour resizing keeps resize-then-crop: there a rounding picks a neighbour."""
        if self.interpolation == "nearest":  # a nudged sample position picks another pixel
            image = F.resize(image, self.resize_size, interpolation=InterpolationMode.NEAREST)
            return np.asarray(F.center_crop(image, [self.input_size, self.input_size]), dtype=np.uint8)
        size = (self.input_size, self.input_size)
        resized = image.resize(size, _PIL_FILTERS[self.interpolation], box=self.crop_box(*image.size))
        return np.asarray(resized, dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, 3, S, S) float, (x/255 - mean)/std, channels_last in
        memory (the permuted view already is), on whatever device ``pixels`` lives."""
        mean = torch.tensor(self.mean, device=pixels.device).mul_(255.0).view(1, 3, 1, 1)
        inv_std = torch.tensor(self.std, device=pixels.device).mul_(255.0).reciprocal_().view(1, 3, 1, 1)
        return pixels.permute(0, 3, 1, 2).float().sub_(mean).mul_(inv_std)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Eval transform: PIL RGB image -> normalised float tensor (3, S, S); exactly what
        extraction feeds the network (``to_pixels`` then ``normalize``)."""
        pixels = torch.from_numpy(self.to_pixels(image).copy())
        return self.normalize(pixels[None])[0].contiguous()

    def to_train_tensor(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Train-time augmentation: random-resized crop (scale 0.35-1) and horizontal flip."""
        from torchvision.transforms import RandomResizedCrop

        i, j, h, w = RandomResizedCrop.get_params(image, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3))
        image = F.resized_crop(
            image, i, j, h, w, [self.input_size, self.input_size],
            interpolation=_INTERPOLATIONS[self.interpolation],
        )
        if torch.rand(1, generator=generator).item() < 0.5:
            image = F.hflip(image)
        tensor = F.pil_to_tensor(image).float().div_(255.0)
        return F.normalize(tensor, self.mean, self.std)


IMAGENET_INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _rgb(values: Any, name: str) -> tuple[float, float, float]:
    """Three per-channel floats (a preprocessing read from JSON must have exactly three)."""
    floats = [float(v) for v in values]
    if len(floats) != 3:
        raise ValueError(f"{name} needs 3 values (R, G, B), got {len(floats)}")
    return floats[0], floats[1], floats[2]
