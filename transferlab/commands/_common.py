"""Small helpers shared by command modules."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def print_json(payload: Any) -> None:
    """Strict JSON on stdout: NaN and infinities become null."""
    from transferlab.study.results import finite_or_none

    json.dump(finite_or_none(payload), sys.stdout, indent=2, default=_default, allow_nan=False)
    sys.stdout.write("\n")


def parse_csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
