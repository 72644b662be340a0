"""The non-ConvNet baseline: a classic pre-ConvNet image representation as a Source.

The paper compares every ConvNet result with the best non-ConvNet method of its time, and
those methods were almost all built the same way: dense local gradient descriptors encoded
with an improved Fisher vector, combined with global HOG, texture (LBP) and colour
histograms. This module builds that representation from scikit-image and scikit-learn so a
study can show a "Best non-ConvNet" row on any task, extracted and probed exactly like a
ConvNet (same extractor, FeatureStore and heads).

Recipe (``RECIPE_VERSION``; bump it whenever a number below changes, the FeatureStore keys
on it through ``weights_id``), per image of 160x160 pixels (short side resized, centre crop):

- ``fisher``: dense DAISY (skimage; step 4, radius 12, 2 rings x 6 histograms x 8
  orientations = 104-d, L1-normalised), square-rooted (Hellinger), PCA to 64-d, with the
  descriptor's (x, y) position appended (Sanchez et al. 2012 spatial augmentation), encoded
  as an improved Fisher vector (Perronnin et al. 2010: gradients w.r.t. means and variances
  of a 32-Gaussian diagonal GMM) -> 2 x 32 x 66 = 4224-d.
- ``hog``: HOG (skimage; 9 orientations, 5x5 cells, 2x2 blocks, L2-Hys) -> 576-d.
- ``lbp``: uniform LBP (P=8, R=1) histograms over the whole image and a 2x2 grid -> 50-d.
- ``color``: joint HSV histogram (8 hue x 3 saturation x 3 value) over the whole image
  and a 2x2 grid -> 360-d.

Each block is signed-square-rooted and L2-normalised; the concatenation is divided by
sqrt(number of blocks) so it has unit norm and every block weighs the same.

The Fisher codebook (PCA + GMM) is learned, never downloaded: by default from the photos
shipped inside scikit-image (seeded, so deterministic) and cached as an .npz in
``cache_dir("handcrafted")``; ``fit_codebook`` learns one from a user's own images, loaded
with ``load_source("handcrafted", weights=FILE)``. ``weights_id`` carries a hash of the
codebook, so features extracted with a different codebook are never mixed up.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.base import FEATURES_OUTPUT, Source
from transferlab.sources.handcrafted_codebook import (
    BLOCKS,
    GMM_COMPONENTS,
    PREPROCESSING,
    RECIPE,
    Codebook,
    color_vector,
    daisy_descriptors,
    default_codebook,
    fit_codebook,
    hog_vector,
    lbp_vector,
    power_l2,
    single_threaded_blas,
    to_gray,
)
from transferlab.sources.registry import register_source_kind


# ------------------------------------------------------------------------------ model
@dataclass
class Pixels:
    """A batch undone from the source's normalisation, on the CPU: what every block reads."""

    rgb: np.ndarray  # (B, S, S, 3) float64 in [0, 1]
    gray: np.ndarray  # (B, S, S)
    device: torch.device


class _Block(nn.Module):
    """One descriptor family; its output (B, D) is hookable as a layer by the block's name."""

    def vector(self, pixels: Pixels, i: int) -> np.ndarray:
        raise NotImplementedError

    def forward(self, pixels: Pixels) -> torch.Tensor:
        rows = np.stack([power_l2(self.vector(pixels, i)) for i in range(len(pixels.rgb))])
        return torch.from_numpy(rows.astype(np.float32)).to(pixels.device)


class FisherBlock(_Block):
    def __init__(self, codebook: Codebook):
        super().__init__()
        self.codebook = codebook

    def vector(self, pixels: Pixels, i: int) -> np.ndarray:
        return self.codebook.fisher_vector(self.codebook.project(daisy_descriptors(pixels.gray[i])))


class HogBlock(_Block):
    def vector(self, pixels: Pixels, i: int) -> np.ndarray:
        return hog_vector(pixels.gray[i])


class LbpBlock(_Block):
    def vector(self, pixels: Pixels, i: int) -> np.ndarray:
        return lbp_vector(pixels.gray[i])


class ColorBlock(_Block):
    def vector(self, pixels: Pixels, i: int) -> np.ndarray:
        return color_vector(pixels.rgb[i])


class HandcraftedNet(nn.Module):
    """Undo the normalisation, compute each block on the CPU, concatenate.

    Blocks are child modules named ``fisher``/``hog``/``lbp``/``color`` so a study can
    request one of them as a layer by name. It has no trainable weights: the single empty
    parameter only tells the extractor which device the model is on."""

    def __init__(self, blocks: dict[str, _Block], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.block_names = list(blocks)
        for name, block in blocks.items():
            self.add_module(name, block)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def pixels(self, x: torch.Tensor) -> Pixels:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        scaled = (x.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
        rgb = np.ascontiguousarray(scaled.detach().cpu().numpy(), dtype=np.float64)
        return Pixels(rgb, to_gray(rgb), x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.pixels(x)
        with single_threaded_blas():
            parts = [getattr(self, name)(pixels) for name in self.block_names]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def _forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def parse_blocks(variant: str) -> list[str]:
    """``""`` -> all blocks; ``"hog+color"`` -> those blocks in canonical order."""
    if not variant.strip():
        return list(BLOCKS)
    names = [part.strip() for part in variant.split("+")]
    unknown = [n for n in names if n not in BLOCKS]
    if unknown or not names:
        raise TransferlabError(f"handcrafted has no block {', '.join(map(repr, unknown)) or repr(variant)}; "
                               f"use handcrafted or handcrafted:BLOCK[+BLOCK...] with blocks "
                               f"{', '.join(BLOCKS)}")
    return [b for b in BLOCKS if b in names]


def load_handcrafted(variant: str = "", weights: str | None = None) -> Source:
    """The ``handcrafted[:BLOCKS]`` source; ``weights`` is a codebook .npz from
    ``fit_codebook`` (default: the one learned from scikit-image's photos)."""
    blocks = parse_blocks(variant)
    codebook = None
    if "fisher" in blocks:
        if weights in (None, "", "builtin", "default"):
            codebook = default_codebook()
        else:
            codebook = Codebook.load(weights)
    elif weights not in (None, "", "builtin", "default"):
        raise TransferlabError(f"--weights is a Fisher codebook; handcrafted:{variant} has no fisher block")
    modules: dict[str, _Block] = {}
    for name in blocks:
        if name == "fisher":
            assert codebook is not None  # loaded above whenever the fisher block is asked for
            modules[name] = FisherBlock(codebook)
        else:
            modules[name] = {"hog": HogBlock, "lbp": LbpBlock, "color": ColorBlock}[name]()
    model = HandcraftedNet(modules, PREPROCESSING.mean, PREPROCESSING.std).eval()
    weights_id = f"{RECIPE}:" + (f"codebook-{codebook.digest()[:16]}" if codebook else "no-codebook")
    name = "handcrafted" if blocks == list(BLOCKS) else "handcrafted:" + "+".join(blocks)
    info: dict[str, Any] = {"recipe": RECIPE, "blocks": blocks}
    if codebook is not None:
        info["codebook"] = {"path": codebook.info.get("path", ""), "components": int(codebook.means.shape[0]),
                            "images": len(codebook.info.get("images", []))}
    return Source(name=name, model=model, preprocessing=PREPROCESSING, layer_names=[FEATURES_OUTPUT],
                  forward_features=_forward_features, forward_head=None, weights_id=weights_id,
                  arch=f"handcrafted:{'+'.join(blocks)}", num_classes=0, info=info)


register_source_kind(
    "handcrafted", load_handcrafted,
    "non-ConvNet baseline: DAISY improved Fisher vector + HOG + LBP + HSV histogram "
    "(handcrafted:BLOCK[+BLOCK] for fisher/hog/lbp/color; --weights CODEBOOK.npz from fit_codebook)",
)


# -------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m transferlab.sources.handcrafted OUT.npz IMAGE_OR_FOLDER...``"""
    parser = argparse.ArgumentParser(prog="python -m transferlab.sources.handcrafted",
                                     description="Learn a Fisher codebook for the handcrafted source "
                                                 "from your own training images.")
    parser.add_argument("out", help="codebook file to write (.npz)")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--components", type=int, default=GMM_COMPONENTS, help="GMM size K")
    parser.add_argument("--max-descriptors", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        book = fit_codebook(args.images, args.out, n_components=args.components,
                            max_descriptors=args.max_descriptors, seed=args.seed)
    except TransferlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(book.info['images'])} images, {book.info['n_descriptors']} descriptors, "
          f"K={book.means.shape[0]}, weights id {RECIPE}:codebook-{book.digest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
