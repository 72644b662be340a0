"""Features: one-pass extraction, pooling, post-processing and the FeatureStore."""

from __future__ import annotations

from typing import Any

__all__ = ["PCA", "FeatureStore", "L2Normalize", "PowerNormalize", "build_postprocess"]


def __getattr__(name: str) -> Any:  # lazy: keep `import transferlab.features` free of torch
    if name in ("PCA", "L2Normalize", "PowerNormalize", "build_postprocess", "Postprocess"):
        from transferlab.features import postprocess

        return getattr(postprocess, name)
    if name == "FeatureStore":
        from transferlab.features.store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
