"""Where a result was computed: the node, host and device that extracted its features (from
the FeatureStore's per-shard provenance records) and the node that evaluated it.

Both executors stamp every ResultRow with ``placement``; on Ray the node is the Ray node id
(hostnames repeat when several raylets share a machine), locally it is None.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any


def this_node(device: str | None = None) -> dict[str, Any]:
    """This process's node: Ray node id (inside a Ray worker or driver), hostname, pid."""
    node_id = None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # not a Ray process after all
            node_id = None
    out: dict[str, Any] = {"node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid()}
    if device is not None:
        out["device"] = device
    return out


def shard_record(device: str, **extra: Any) -> dict[str, Any]:
    """The provenance record written beside a shard by the process that extracted it."""
    return {**this_node(device), **extra, "written": time.time()}


def _feature_keys(features) -> Iterable[tuple[Any, Any]]:
    """(store, GroupKey) of every member, split and view of a FeatureSource."""
    for member in features.members:
        for split in member.splits.values():
            for key in split.keys.values():
                yield split.store, key


def extraction_placement(features) -> list[dict[str, Any]]:
    """Who extracted the shards behind ``features``: one entry per (node, host, device) with
    its shard count; shards without a record (written before records existed) count as
    ``node_id``/``hostname`` None."""
    counts: dict[tuple, int] = {}
    for store, key in _feature_keys(features):
        for record in store.provenance(key).values():
            record = record or {}
            ident = (record.get("node_id"), record.get("hostname"), record.get("device"))
            counts[ident] = counts.get(ident, 0) + 1
    return [{"node_id": n, "hostname": h, "device": d, "shards": c}
            for (n, h, d), c in sorted(counts.items(), key=lambda item: tuple(str(v) for v in item[0]))]


def record_local_extraction(features, device: str) -> None:
    """After an in-process extraction: a record for each shard of a split this process
    forwarded that has none yet (the local executor extracts through ``extract`` directly)."""
    for member in features.members:
        for split in member.splits.values():
            if not split.forwarded_images:
                continue
            for key in split.keys.values():
                for shard, record in split.store.provenance(key).items():
                    if record is None:
                        split.store.write_provenance(key, shard, shard_record(device))


def stamp(outcome: list, extracted: list[dict[str, Any]] | None = None, evaluated: dict | None = None) -> list:
    """Set ``placement`` on the ResultRows of an evaluation outcome (error strings pass)."""
    for row in outcome:
        placement = getattr(row, "placement", None)
        if placement is None:
            continue
        if extracted is not None:
            placement["extracted"] = extracted
        if evaluated is not None:
            placement["evaluated"] = evaluated
    return outcome
