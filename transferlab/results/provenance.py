"""Provenance of a result: the package versions, git commit, seed and device that made it,
stored in every row so a number can be traced to the code that produced it."""

from __future__ import annotations

import os
import subprocess
from typing import Any

# Distribution names whose versions make a result reproducible (key -> distribution).
PROVENANCE_PACKAGES = {
    "transferlab": "transferlab",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
}
PROVENANCE_KEYS = ("identity", "config_hash", "versions", "git_commit", "seed", "device", "created", "placement")


def collect_provenance(config_hash: str, seed: int, device: str) -> dict[str, Any]:
    """What produced a result: config hash, seed, device, package versions, git commit of cwd."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for key, dist in PROVENANCE_PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    if versions["transferlab"] is None:
        import transferlab

        versions["transferlab"] = transferlab.__version__
    return {
        "config_hash": config_hash,
        "versions": versions,
        "git_commit": _git_commit(),
        "seed": seed,
        "device": device,
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.getcwd(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) >= 7 else None
