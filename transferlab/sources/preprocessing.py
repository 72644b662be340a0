"""Preprocessing stored with each source's weights (timm's idea): resize, centre crop, scale.

The same object builds the eval transform used for extraction and the train-time augmentation
used by fine-tuning, so a network never sees pixels prepared differently from its training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
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
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Eval transform: PIL RGB image -> normalised float tensor (3, S, S)."""
        image = F.resize(image, self.resize_size, interpolation=_INTERPOLATIONS[self.interpolation])
        image = F.center_crop(image, [self.input_size, self.input_size])
        tensor = F.pil_to_tensor(image).float().div_(255.0)
        return F.normalize(tensor, self.mean, self.std)

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
