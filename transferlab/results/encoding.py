"""The one JSON encoding of transferlab: results, metadata, checkpoints' side files, CLI output.

NumPy scalars and arrays, paths, tuples and sets become plain JSON values; ``dumps`` is the
canonical form (sorted keys, no spaces) that keys and the store hash; ``strict`` turns NaN and
infinities into null for consumers that need standard JSON.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


def to_json_value(obj: Any) -> Any:
    """``json.dumps(default=...)`` hook: NumPy values, paths, sets (sorted) and tuples."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-able")


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces); NaN is kept (Python's json reads it back)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=to_json_value)


def dumps_pretty(value: Any, *, strict: bool = False) -> str:
    """Indented JSON for files people read; ``strict``: NaN/inf become null."""
    if strict:
        return json.dumps(finite_or_none(value), indent=2, default=to_json_value, allow_nan=False)
    return json.dumps(value, indent=2, default=to_json_value)


def plain(value: Any) -> Any:
    """The value as JSON would give it back (tuples -> lists, NumPy -> Python)."""
    return json.loads(json.dumps(value, default=to_json_value))


def finite_or_none(value: Any) -> Any:
    """NaN/inf -> None, recursively, for strict JSON and CSV exports (numpy scalars and
    arrays become Python values first)."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
