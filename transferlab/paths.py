"""Where transferlab keeps files it produces itself (materialised built-in datasets, caches).

One environment variable, ``TRANSFERLAB_CACHE``, moves everything, so tests and shared
machines can point it at a scratch folder.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TRANSFERLAB_CACHE"
DEFAULT_CACHE = "~/.cache/transferlab"


def cache_root() -> Path:
    """The cache folder: ``$TRANSFERLAB_CACHE`` if set and non-empty, else ~/.cache/transferlab.

    Always absolute (a relative value is taken from the current directory); not created here.
    """
    value = os.environ.get(CACHE_ENV, "").strip() or DEFAULT_CACHE
    root = Path(value).expanduser().absolute()
    if root.exists() and not root.is_dir():
        from transferlab.errors import TransferlabError

        raise TransferlabError(f"{CACHE_ENV}={value}: {root} is a file, not a folder; point {CACHE_ENV} at a folder")
    return root


def cache_dir(*parts: str, create: bool = True) -> Path:
    """A sub-folder of the cache root (e.g. ``cache_dir("datasets")``), created by default."""
    path = cache_root().joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
