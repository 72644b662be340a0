"""Sharded extraction on a Ray cluster: every missing (source, split, view, FeatureStore
shard) is one unit of work, run by long-lived worker actors that hold the source networks.

- Workers: one actor per GPU, or on CPU nodes actors of ``cpus_per_worker`` CPUs whose torch
  threads equal that request, pinned to their node (Ray restarts a killed one in place and
  retries its shard: ``max_restarts``/``max_task_retries``).
- Every unit of every (source, task) is queued at once, longest first, handed out round
  robin; each worker has at most ``DEPTH`` units in flight (back-pressure: the driver holds a
  few small handles per worker, never features), and one in the tail, so the last units go to
  whichever worker frees up first.
- Workers write their shards into the shared FeatureStore (atomic files, as locally) with
  a provenance record (node, host, device); the driver only reads the store afterwards.
- A worker whose node is lost is reported and its units go to the others; if none is left
  the run stops with one line and the rerun resumes from the shards already in the store.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from transferlab.errors import TransferlabError

DEPTH = 2  # units in flight per worker: one running, one queued behind it (not in the tail)


def dispatch_order(slots: list, queued: int) -> list:
    """The slots to hand the next ``queued`` units (longest first) to, in order: round robin
    over the live slots with room, so the longest units spread over the workers; a second unit
    queues behind a running one only while more than ``DEPTH`` units per live slot wait, so the
    tail is not committed early to a busy worker (a free one takes it instead)."""
    live = [s for s in slots if s.alive]
    room = {id(s): s.inflight for s in live}
    order = []
    while queued > 0:
        depth = DEPTH if queued > DEPTH * len(live) else 1
        ready = [s for s in live if room[id(s)] < depth]
        if not ready:
            break
        for slot in ready:
            if queued == 0:
                break
            order.append(slot)
            room[id(slot)] += 1
            queued -= 1
    return order
WAIT_S = 5.0  # how often the driver looks for lost nodes while waiting
UNIT_ATTEMPTS = 3  # a unit whose worker died is re-queued this many times, then the run stops


@dataclass(frozen=True)
class Unit:
    """One missing shard of one (source member, split, view)."""

    request: int  # index of the extraction request it belongs to
    spec: str
    weights: str | None
    split: str
    view: str
    shard: int
    images: int
    digest: str  # the GroupKey digest the driver expects the worker to write


def plan_units(requests: list[tuple], sources: dict) -> list[Unit]:
    """Missing shards of each request ``(specs, task, layers, poolings, views, store_root,
    execution[, members])``, computed on the driver from the store (sources loaded once, cached
    in ``sources``; a request's ``members``, the plan's loaded networks, are used as they are)."""
    from transferlab.data.base import image_splits
    from transferlab.features.extract import group_keys
    from transferlab.features.pooling import pooling_applies, validate_pooling
    from transferlab.features.store import FeatureStore, output_name

    units: list[Unit] = []
    for number, request in enumerate(requests):
        specs, task, layers, poolings, views, store_root, execution = request[:7]
        loaded = request[7] if len(request) > 7 and request[7] else None
        store = FeatureStore(store_root) if store_root else FeatureStore()
        names = [validate_pooling(p) for p in poolings]
        for k, (spec, weights) in enumerate(specs):
            if loaded is not None:
                sources.setdefault((spec, weights, execution.get("resolution")), loaded[k])
            source = _cached_source(sources, spec, weights, execution.get("resolution"))
            resolved = source.resolve_layers(usable_layers(source, layers))
            outputs = [output_name(layer.name, p) for layer in resolved for p in names if pooling_applies(layer, p)]
            for split_name, split in image_splits(task).items():
                keys = group_keys(source, split.paths, split.boxes, views, execution.get("jpeg_draft", False))
                for view, key in keys.items():
                    for shard in store.missing(key, outputs):
                        start, stop = store.shard_range(key, shard)
                        units.append(Unit(number, spec, weights, split_name, view, shard, stop - start, key.digest))
    return units


def usable_layers(source, layers: list) -> list:
    """The requested layers this source has (as ``extract_pair`` does)."""
    out = []
    for layer in layers:
        try:
            source.resolve_layers([layer])
        except TransferlabError:
            continue
        out.append(layer)
    return out


def _cached_source(cache: dict, spec: str, weights: str | None, resolution: int | None = None):
    from transferlab.sources.concat import load_members

    (source,) = load_members(spec, weights, resolution, cache)
    return source


class ExtractionWorker:
    """A Ray actor holding source networks; extracts one shard per call."""

    def __init__(self, cpus: int):
        import torch

        self.cpus = max(1, int(cpus))
        torch.set_num_threads(self.cpus)  # the CPU request, not the machine's core count
        os.environ["OMP_NUM_THREADS"] = str(self.cpus)
        self.sources: dict = {}

    def ready(self) -> dict[str, Any]:
        from transferlab.study.placement import this_node

        return this_node()

    def extract(self, unit: Unit, task, layers: list, poolings: list[str], store_root: str | None,
                execution: dict) -> dict[str, Any]:
        from threadpoolctl import threadpool_limits

        from transferlab.data.base import image_splits
        from transferlab.device import resolve_device
        from transferlab.features.extract import extract, group_keys
        from transferlab.features.store import FeatureStore
        from transferlab.study.placement import shard_record, this_node

        source = _cached_source(self.sources, unit.spec, unit.weights, execution.get("resolution"))
        split = image_splits(task)[unit.split]
        jpeg_draft = execution.get("jpeg_draft", False)
        key = group_keys(source, split.paths, split.boxes, [unit.view], jpeg_draft)[unit.view]
        node = this_node()
        if key.digest != unit.digest:
            raise TransferlabError(
                f"node {str(node['node_id'])[:12]} [{node['hostname']}] sees other image files for "
                f"{task.name}/{unit.split} than the driver (sizes or times differ): "
                "share the data folder, do not copy it")
        store = FeatureStore(store_root) if store_root else FeatureStore()
        device = resolve_device(execution["device"])
        started = time.perf_counter()
        with threadpool_limits(limits=self.cpus):
            feats = extract(source, split, source.resolve_layers(usable_layers(source, layers)), poolings,
                            [unit.view], store=store, device=str(device), batch_size=execution["batch_size"],
                            on_bad_image=execution["on_bad_image"], progress=False, jpeg_draft=jpeg_draft,
                            compile_model=execution.get("compile", False), shards=[unit.shard])
        seconds = time.perf_counter() - started
        if feats.forwarded_images or store.provenance(key).get(unit.shard) is None:
            store.write_provenance(key, unit.shard, shard_record(str(device), seconds=round(seconds, 3),
                                                                 images=unit.images))
        return {"forwarded": feats.forwarded_images, "seconds": seconds, "node_id": node["node_id"],
                "device": str(device)}


@dataclass
class _Slot:
    actor: Any
    node_id: str
    ip: str
    inflight: int = 0
    alive: bool = True


class WorkerPool:
    """The extraction actors of the cluster, created on first use and released (so
    evaluation tasks get the CPUs) when a batch of units is done."""

    def __init__(self, cpus_per_worker: int = 4):
        self.cpus_per_worker = max(1, cpus_per_worker)
        self.slots: list[_Slot] = []
        self.lost: list[str] = []

    def start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from transferlab.study.ray_cluster import alive_nodes

        if self.slots:
            return
        remote = ray.remote(ExtractionWorker)
        for node in alive_nodes():
            if node["gpus"] >= 1:  # one worker per GPU, the node's CPUs shared among them
                count, cpus, gpus = node["gpus"], max(1, node["cpus"] // node["gpus"]), 1
            elif node["cpus"] >= 1:
                cpus = min(self.cpus_per_worker, node["cpus"])
                count, gpus = node["cpus"] // cpus, 0
            else:
                continue
            for _ in range(count):
                actor = remote.options(
                    num_cpus=cpus, num_gpus=gpus, max_restarts=3, max_task_retries=3,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
                ).remote(cpus)
                self.slots.append(_Slot(actor, node["node_id"], node["ip"]))
        if not self.slots:
            raise TransferlabError("the Ray cluster has no node with a CPU or GPU to extract on")

    def stop(self) -> None:
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.slots = []

    def run(self, units: list[Unit], requests: list[tuple], progress: bool = True) -> dict[int, int]:
        """Run every unit; returns images forwarded per request index."""
        import ray
        from tqdm.auto import tqdm

        from transferlab.study.ray_cluster import is_alive, node_label

        forwarded: dict[int, int] = {}
        if not units:
            return forwarded
        self.start()
        task_refs: dict[int, Any] = {}
        by_task: dict[str, Any] = {}
        for number, request in enumerate(requests):
            task = request[1]
            if task.name not in by_task:  # one copy of each task's image lists in the object store
                by_task[task.name] = ray.put(task)
            task_refs[number] = by_task[task.name]
        queue = deque(sorted(units, key=lambda u: -u.images))  # longest first: the last ones finish together
        attempts: dict[Unit, int] = {}
        inflight: dict[Any, tuple[Unit, _Slot]] = {}
        counted: set[tuple] = set()
        bar = tqdm(total=sum(u.images for u in units), unit="img", file=sys.stderr, dynamic_ncols=True,
                   desc=f"extracting {len(units)} shards on {len(self.slots)} Ray workers", disable=not progress)
        try:
            while queue or inflight:
                for slot in dispatch_order(self.slots, len(queue)):
                    unit = queue.popleft()
                    _, _, layers, poolings, _, store_root, execution = requests[unit.request][:7]
                    ref = slot.actor.extract.remote(unit, task_refs[unit.request], layers, poolings, store_root,
                                                    execution)
                    inflight[ref] = (unit, slot)
                    slot.inflight += 1
                if not inflight:
                    raise TransferlabError(self._all_lost_message(len(queue)))
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
                if not done:
                    for slot in self.slots:
                        if slot.alive and not is_alive(slot.node_id):
                            self._lose(slot, "its node is gone", inflight, queue, attempts)
                    continue
                for ref in done:
                    unit, slot = inflight.pop(ref)
                    slot.inflight -= 1
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the extraction itself failed
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, TransferlabError):
                            raise cause from None
                        last = (str(cause or exc).strip().splitlines() or [type(exc).__name__])[-1]
                        raise TransferlabError(f"extracting {unit.spec} {unit.split}/{unit.view} shard {unit.shard} "
                                               f"failed on {node_label(slot.node_id, slot.ip)}: {last}") from None
                    except ray.exceptions.RayError as exc:  # the worker or its node died for good
                        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                        queue.append(unit)
                        attempts[unit] = attempts.get(unit, 0) + 1
                        if attempts[unit] >= UNIT_ATTEMPTS:
                            raise TransferlabError(f"extracting {unit.spec} {unit.split}/{unit.view} shard "
                                                   f"{unit.shard} lost its worker {attempts[unit]} times ({why}); "
                                                   "finished shards are in the store: rerun to resume") from None
                        if slot.alive:
                            self._lose(slot, why if is_alive(slot.node_id) else "its node is gone", inflight, queue,
                                       attempts)
                        continue
                    image_set = (unit.request, unit.spec, unit.split, unit.shard)  # counted once over views,
                    if result["forwarded"] and image_set not in counted:  # as a local pass counts them
                        counted.add(image_set)
                        forwarded[unit.request] = forwarded.get(unit.request, 0) + int(result["forwarded"])
                    bar.update(unit.images)
        finally:
            bar.close()
            for ref in inflight:
                ray.cancel(ref, force=False)
        return forwarded

    def _lose(self, slot: _Slot, why: str, inflight: dict, queue: deque, attempts: dict) -> None:
        """Report a lost worker and hand its in-flight units to the others."""
        from transferlab.study.ray_cluster import node_label

        slot.alive = False
        label = node_label(slot.node_id, slot.ip)
        self.lost.append(label)
        moved = [ref for ref, (_, s) in inflight.items() if s is slot]
        for ref in moved:
            unit, _ = inflight.pop(ref)
            queue.appendleft(unit)
        slot.inflight = 0
        left = sum(1 for s in self.slots if s.alive)
        print(f"transferlab: lost the extraction worker on {label} ({why}); {len(moved)} shard(s) in flight go to "
              f"the {left} other worker(s)", file=sys.stderr)

    def _all_lost_message(self, pending: int) -> str:
        return (f"every extraction worker was lost ({', '.join(self.lost) or 'none started'}); {pending} shard(s) "
                "are not extracted, the finished ones are in the store: rerun to resume")
