"""Default forward batch size, when the one-off cost of ``torch.compile`` pays for itself, and
where its cache lives.

Measured for EfficientNet-Lite0 on 2 CPU cores: compiling the one-pass forward takes ~40 s cold
(~5 s with inductor's on-disk cache warm). Against the eager forward as it was (unfolded, 25 ms
per image) it ran ~1.3-1.5x faster. Against today's eager forward (BatchNorm folded, TF padding
aligned, conv + ReLU6 fused, batch 6: ``features.fold``) it gains nothing: a 2048-image
``extract`` took 20.9 s compiled (warm cache) against 16.2 s eager, 7.1 against 6.8 ms per
image beyond 512 images. So ``COMPILE_GAIN`` is 0 and the automatic choice stays eager;
``--compile`` still compiles. The rule stays in place for a measurement that finds a gain.
"""

from __future__ import annotations

import os
import shutil

import torch

from transferlab.paths import cache_dir

# Images per forward batch by default. On the CPU small batches are faster per image: the
# activations of a few images stay in cache between layers. Built-in networks on 2 cores,
# eager, channels_last (ms per image at batch 4 / 6 / 8 / 16 / 32): EfficientNet-Lite0
# 4.5 / 4.2 / 5.3 / 5.9 / 6.6, MobileNetV2 3.9 / 3.6 / 4.3 / 5.7 / 6.6, EfficientNet-Lite2
# at 260 px 9.4 / 8.8 / 10.2 / 11.8 / 16.1; a whole 256-image `extract`: 4.0 s at 6, 4.9 s at 32.
CPU_BATCH = 6
GPU_BATCH = 32
COMPILE_SECONDS = 40.0  # cold compile of the pooled forward, 2 CPU cores
COMPILE_GAIN = 0.0  # share of the forward time compile saves over the eager rewrites (measured: none)
MARGIN = 1.25


def default_batch_size(device: torch.device) -> int:
    """Forward batch size when the caller gives none (see ``CPU_BATCH``)."""
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH


def compile_pays(n_forwards: int, source, device: torch.device) -> bool:
    """True when compiling should pay on this run: ``n_forwards`` images x views to forward."""
    if device.type != "cpu" or COMPILE_GAIN <= 0 or not has_cxx_compiler():
        return False
    from transferlab.features.extract import estimate_seconds

    saving = estimate_seconds(n_forwards, source) * COMPILE_GAIN
    return saving > MARGIN * COMPILE_SECONDS


def has_cxx_compiler() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)


def use_compile_cache() -> None:
    """Keep inductor's compiled kernels under transferlab's cache, so a later run reuses them
    (unless the user already chose a folder)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("torchinductor")))
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except (ImportError, AttributeError):  # an older torch: its default caching applies
        pass
