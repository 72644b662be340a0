"""``concat:[a, b, ...]``: several sources whose representations are concatenated image by
image (the paper's Concat of ImageNet and Places features).

This module owns the spec's syntax (``concat_members``, and ``split_specs`` for comma lists
that hold such specs) and turns any spec into its loaded member networks (``load_members``:
one network for a plain spec, one per member for a concatenation), the one place a command or
a study loads "the networks behind a spec". Their features are put side by side by
``features.handle.ConcatFeatures`` (``features.export.export_concat`` for an export)."""

from __future__ import annotations

import re

from transferlab.errors import TransferlabError
from transferlab.sources.base import Source

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


def split_specs(text: str) -> list[str]:
    """A comma list of source specs, split only at commas outside brackets, so
    ``concat:[a,b],c`` is two specs (``concat:[a,b]`` and ``c``); empty entries dropped."""
    specs: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise TransferlabError(f"source list {text!r}: ']' at position {i + 1} closes nothing")
        elif char == "," and depth == 0:
            specs.append(text[start:i])
            start = i + 1
    if depth:
        raise TransferlabError(f"source list {text!r}: a '[' is not closed")
    specs.append(text[start:])
    return [spec.strip() for spec in specs if spec.strip()]


def load_members(spec: str, weights: str | None = None, resolution: int | None = None,
                 cache: dict[tuple, Source] | None = None) -> list[Source]:
    """The loaded networks behind ``spec``: ``[source]`` for a plain spec, every member in
    order for ``concat:[...]``. ``weights`` names one network's file, so a concatenation
    takes none (or ``none``: random init for every member). ``cache``: networks loaded
    already, by (spec, weights, resolution), shared with the caller's other specs (a study's
    ``concat:[a, b]`` and its plain ``a`` load ``a`` once)."""
    from transferlab.sources import registry  # at call time, so a wrapped load_source is seen

    members = concat_members(spec)
    if members is None:
        pairs = [(spec.strip(), weights)]
    else:
        if weights not in (None, "", "none", "builtin"):
            raise TransferlabError(f"{spec}: a weights file names one network's weights; a concat:[...] source "
                                   "takes none (or 'none': random init for every member)")
        pairs = [(member, "none" if weights == "none" else None) for member in members]
    cache = {} if cache is None else cache
    out = []
    for member, member_weights in pairs:
        key = (member, member_weights, resolution)
        if key not in cache:
            cache[key] = registry.load_source(member, member_weights, resolution=resolution)
        out.append(cache[key])
    return out
