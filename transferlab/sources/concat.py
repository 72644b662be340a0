"""``concat:[a, b, ...]``: several sources whose representations are concatenated image by
image (the paper's Concat of ImageNet and Places features). This module owns the spec's
syntax; the study, ``probe`` and ``extract`` load each member and put their features side by
side (``study.evaluation.FeatureSource``, ``features.export.export_concat``)."""

from __future__ import annotations

import re

from transferlab.errors import TransferlabError

CONCAT = re.compile(r"^concat:\[(.+)\]$")


def concat_members(spec: str) -> list[str] | None:
    """The member specs of a ``concat:[...]`` spec, or None when ``spec`` is not one."""
    match = CONCAT.match(spec.strip())
    if not match:
        if spec.strip().startswith("concat:"):
            raise TransferlabError(f"source {spec!r}: write a concatenation as concat:[a, b]")
        return None
    members = [part.strip() for part in match.group(1).split(",") if part.strip()]
    if len(members) < 2:
        raise TransferlabError(f"source {spec!r}: a concatenation needs at least two sources")
    return members
