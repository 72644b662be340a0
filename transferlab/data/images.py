"""Reading images for extraction: decode, crop to a box, batch.

JPEG files are decoded with torchvision's libjpeg-turbo binding (the same pixels as PIL's,
in about half the time); anything else, or a JPEG it refuses, goes through PIL, whose error
names what is wrong. On the CPU, a batch is decoded by a small thread pool in the gap
between two forward passes: decoding and resampling release the GIL, and the cores would
otherwise idle while one thread decodes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferlab.data.base import Box
from transferlab.errors import BadImageError

_JPEG_MAGIC = b"\xff\xd8\xff"


def decode_rgb(path: str) -> Image.Image:
    """Decode an image file as an RGB PIL image."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:3] == _JPEG_MAGIC:
        decoded = _decode_jpeg(data)
        if decoded is not None:
            return decoded
    with Image.open(path) as handle:
        handle.load()
        return to_rgb8(handle, path)


def to_rgb8(image: Image.Image, path: str = "<image>") -> Image.Image:
    """8-bit RGB of any PIL mode. PIL's own ``convert("RGB")`` clips wide modes (a 16-bit PNG
    comes out all 255, a float TIFF in [0, 1] all black), so those are scaled here:
    ``I;16*`` by 255/65535; ``I`` (32-bit int) as 16-bit when its values fit in [0, 65535],
    else stretched over its range; ``F`` kept when in [0, 255], x255 when in [0, 1], else
    stretched over its range. Non-finite floats are refused naming the file and mode."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise BadImageError(path, f"mode {mode} image holds NaN or infinite values")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
            scaled = values / 257.0
        elif mode == "F" and low >= 0 and high <= 1:
            scaled = values * 255.0
        elif mode == "F" and low >= 0 and high <= 255:
            scaled = values
        else:
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise BadImageError(path, f"mode {mode} cannot be converted to RGB ({exc})") from None


def _decode_jpeg(data: bytes) -> Image.Image | None:
    """libjpeg-turbo through torchvision; None when it refuses (PIL then gives the error) or
    when torchvision no longer has it (deprecated since 0.29 in favour of TorchCodec)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return Image.fromarray(tensor.permute(1, 2, 0).numpy())


def read_image(path: str, box: Box | None = None, draft_short_side: int | None = None) -> Image.Image:
    """Decode an image as RGB, cropped to ``box`` (x1, y1, x2, y2, original pixels) if given.

    ``draft_short_side`` opts into libjpeg's DCT-domain downscaling for JPEG files: decoding
    at 1/2, 1/4 or 1/8 scale while the kept region's short side stays at least that long
    (the resize target). Several times faster on large photos; pixels then differ from a
    full decode by about 1/255 on average, so it is off unless asked for."""
    if draft_short_side is not None and _is_jpeg(path):
        image, box = _decode_jpeg_draft(path, box, draft_short_side)
    else:
        image = decode_rgb(path)
    if box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(image.width, max(x2, x1 + 1)), min(image.height, max(y2, y1 + 1))
        image = image.crop((x1, y1, x2, y2))
    return image


def _is_jpeg(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(3) == _JPEG_MAGIC


def _decode_jpeg_draft(path: str, box: Box | None, short_side: int) -> tuple[Image.Image, Box | None]:
    """Reduced-scale decode, and ``box`` mapped onto the reduced image."""
    with Image.open(path) as handle:
        width, height = handle.size
        region = (width, height) if box is None else (box[2] - box[0], box[3] - box[1])
        keep = short_side / max(1.0, min(region))  # the fraction of the resolution needed
        handle.draft("RGB", (math.ceil(width * keep), math.ceil(height * keep)))
        handle.load()
        image = handle.convert("RGB")
    if box is not None and image.size != (width, height):
        sx, sy = image.width / width, image.height / height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return image, box


class ImageListDataset(Dataset):
    """Images by path as (S, S, 3) uint8 pixels, resized and cropped for a source; the
    float normalisation happens batched, on the device. Unreadable files are flagged, not
    raised, so the main process decides (error or skip) and names the file."""

    def __init__(self, paths: Sequence[str], boxes: Sequence[Box | None] | None, preprocessing,
                 indices: Sequence[int], jpeg_draft: bool = False):
        self.paths = paths
        self.boxes = boxes
        self.preprocessing = preprocessing
        self.indices = list(indices)
        self.draft_short_side = preprocessing.resize_size if jpeg_draft else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, str]:
        index = self.indices[position]
        size = self.preprocessing.input_size
        try:
            box = self.boxes[index] if self.boxes is not None else None
            image = read_image(self.paths[index], box, self.draft_short_side)
            pixels = self.preprocessing.to_pixels(image)
            return torch.from_numpy(pixels.copy()), index, ""
        except Exception as exc:  # any decoder failure is reported with the file name
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return torch.zeros(size, size, 3, dtype=torch.uint8), index, reason or "unreadable"


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes for a training loader: several feeding a GPU; on the CPU
    none on small machines, where torch's threads already use every core."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores - 1)
    return 0 if cores <= 4 else min(4, cores // 4)


def extraction_workers(device: torch.device) -> int:
    """Worker processes for extraction: as for training on a GPU; none on the CPU, where a
    batch is decoded by threads between forward passes instead (measured on 2 cores: worker
    processes compete with torch's threads for the cores and pay to ship tensors across)."""
    return default_workers(device) if device.type == "cuda" else 0


def decode_threads() -> int:
    """Threads that decode one batch between forward passes: one per core this process may use
    (torch's thread count, which a Ray actor sets to its CPU request, and the CPU affinity), at
    most 8 — not the machine's core count, which oversubscribes a 1-CPU worker."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, torch.get_num_threads(), usable))


def image_batches(dataset: ImageListDataset, batch_size: int, num_workers: int,
                  pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(pixels (B, S, S, 3) uint8, dataset indices, failure reasons) per batch, in order.

    ``num_workers > 0`` uses DataLoader worker processes (prefetching, for a GPU); 0 decodes
    with a thread pool in the calling process, one batch ahead of the one being consumed."""
    if num_workers > 0:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=pin_memory, persistent_workers=False)
        for pixels, indices, reasons in loader:
            yield pixels, indices, list(reasons)
        return

    def submit(start: int) -> list:
        return [pool.submit(dataset.__getitem__, i) for i in range(start, min(start + batch_size, len(dataset)))]

    with ThreadPoolExecutor(decode_threads(), thread_name_prefix="decode") as pool:
        pending = submit(0)
        for start in range(0, len(dataset), batch_size):
            items = [future.result() for future in pending]
            pending = submit(start + batch_size)  # decoded while the caller forwards this batch
            yield (torch.stack([item[0] for item in items]),
                   torch.tensor([item[1] for item in items], dtype=torch.int64),
                   [item[2] for item in items])

