"""Shared test fixtures: an isolated cache and small real images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Keep the user's ~/.cache/transferlab out of tests; one cache for the session so built-in
# datasets are materialised once.
_SESSION_CACHE = tempfile.mkdtemp(prefix="transferlab-test-cache-")
os.environ["TRANSFERLAB_CACHE"] = _SESSION_CACHE
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def photo_dir() -> Path:
    """A few real scikit-image photos saved as JPEG files."""
    from PIL import Image
    from skimage import data

    folder = Path(tempfile.mkdtemp(prefix="transferlab-photos-"))
    for name in ("chelsea", "coffee", "astronaut", "rocket", "coins"):
        pixels = getattr(data, name)()
        Image.fromarray(np.asarray(pixels)).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def lite0():
    from transferlab.sources import load_source

    return load_source("efficientnet_lite0")


@pytest.fixture
def store(tmp_path):
    from transferlab.features.store import FeatureStore

    return FeatureStore(tmp_path / "features")
