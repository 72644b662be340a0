"""The per-item test data of a row (for its bootstrap intervals) as one checksummed blob:
compressed NumPy arrays behind an 8-byte SHA-256 prefix, so a damaged blob reads as missing,
never as wrong numbers."""

from __future__ import annotations

import hashlib
import io
from typing import Any


def pack_items(items: dict[str, Any]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in items.items()}
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    return hashlib.sha256(data).digest()[:8] + data


def unpack_items(blob: bytes) -> dict[str, Any] | None:
    import numpy as np

    blob = bytes(blob)
    if len(blob) < 8 or hashlib.sha256(blob[8:]).digest()[:8] != blob[:8]:
        return None
    try:
        with np.load(io.BytesIO(blob[8:]), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
