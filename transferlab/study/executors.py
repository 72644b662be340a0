"""Executors: where study work runs. Local (in-process) or Ray (a local or remote cluster).

Both run the same two top-level functions, so results are identical: ``extract_pair`` (the
expensive forward pass) and ``evaluate_jobs`` (probes/retrieval). On Ray the forward pass
is split into one unit per missing FeatureStore shard, run by worker actors across the
cluster (``study.ray_extract``); ``extract_pair`` then runs on the driver only to assemble
handles on the shards. Both stamp each result row with where it was computed
(``study.placement``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.study.placement import (
    extraction_placement,
    record_local_extraction,
    stamp,
    this_node,
)


class LocalExecutor:
    """Runs everything in this process. Extraction uses every core through torch's threads;
    evaluation calls (probe fits, rankings) run side by side on a thread pool, one BLAS/torch
    thread each: a sweep's many small fits scale poorly inside one call, well across calls
    (measured: a 36-fit sweep's evaluation on 2 cores, see benchmarks/bench_study.py)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def extract_ahead(self, fn: Callable, requests: list[tuple]) -> None:
        """Nothing to do ahead: each pair is extracted when its evaluation needs it."""

    def run_extraction(self, fn: Callable, *args: Any) -> Any:
        result = fn(*args)
        features = result[0] if isinstance(result, tuple) else None
        if hasattr(features, "members"):
            from transferlab.device import resolve_device

            record_local_extraction(features, str(resolve_device(args[6].get("device", "auto"))))  # execution
        return result

    def map_evaluation(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        calls = list(calls)
        node = this_node()
        placements: dict[int, list] = {}
        extracted = [_placement_of(placements, args) for args in calls]
        workers = min(len(calls), self._workers())
        if workers <= 1:
            outcomes: Iterable = (fn(*args) for args in calls)
        else:
            outcomes = _threaded(fn, calls, workers)
        for outcome, where in zip(outcomes, extracted, strict=True):
            yield stamp(outcome, where, node)

    def _workers(self) -> int:
        import torch

        if self.workers is not None:
            return self.workers
        if torch.cuda.is_available():  # fits share one GPU: keep them in order
            return 1
        return min(8, os.cpu_count() or 1)

    def shutdown(self) -> None:
        pass


def _placement_of(cache: dict[int, list], args: tuple) -> list | None:
    """Extraction placement of an evaluation call's features (its third argument), read
    from the store once per feature set."""
    features = args[2] if len(args) > 2 else None
    if not hasattr(features, "members"):
        return None
    if id(features) not in cache:
        cache[id(features)] = extraction_placement(features)
    return cache[id(features)]


class RayExecutor:
    """Extraction as one Ray task per missing shard on worker actors (one per GPU, or CPU
    actors of ``cpus_per_worker``), all pairs in flight at once; evaluation as Ray tasks of
    ``eval_cpus`` CPUs that read features from the shared store by path. Before any compute
    every node must see the driver's cache and FeatureStore (``ray_cluster.check_shared_store``)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_worker: int | None = None, eval_cpus: int = 1):
        try:
            import ray
        except ImportError:
            raise TransferlabError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        from transferlab.study.ray_cluster import connect
        from transferlab.study.ray_extract import WorkerPool

        self.ray = ray
        self._started = connect(address, num_cpus)
        if cpus_per_worker is None:
            cpus_per_worker = int(os.environ.get("TRANSFERLAB_RAY_CPUS_PER_WORKER", "4"))
        self.pool = WorkerPool(cpus_per_worker)
        self.eval_cpus = max(1, eval_cpus)
        self._evaluate = ray.remote(_evaluate_call).options(num_cpus=self.eval_cpus, max_retries=3)
        self._checked: set[str] = set()
        self._sources: dict = {}
        self._forwarded: dict[tuple, int] = {}

    # ----------------------------------------------------------------- extraction
    def _check_store(self, store_root: str | None) -> None:
        from transferlab.features.store import FeatureStore
        from transferlab.paths import cache_root
        from transferlab.study.ray_cluster import check_shared_store

        roots = [str(cache_root()), str(FeatureStore(store_root).root if store_root else FeatureStore().root)]
        if set(roots) - self._checked:
            check_shared_store(roots)
            self._checked.update(roots)

    def extract_ahead(self, fn: Callable, requests: list[tuple]) -> None:
        """Every shard of every request in flight at once across the cluster's workers."""
        if requests:
            self._extract(requests)

    def _extract(self, requests: list[tuple]) -> None:
        from transferlab.study.ray_extract import plan_units

        requests = [_absolute_store(r) for r in requests]
        self._check_store(requests[0][5])
        units = plan_units(requests, self._sources)
        if not units:
            return
        progress = requests[0][6].get("progress", True)
        try:
            forwarded = self.pool.run(units, requests, progress)
        finally:
            self.pool.stop()  # the CPUs go back to evaluation tasks
        for number, count in forwarded.items():
            key = _request_key(requests[number])
            self._forwarded[key] = self._forwarded.get(key, 0) + count

    def run_extraction(self, fn: Callable, *args: Any) -> Any:
        """``fn`` is ``extract_pair``: its missing shards run on the cluster, then ``fn`` runs
        here only to open the finished shards (it must forward nothing itself)."""
        from transferlab.study.ray_extract import plan_units

        args = _absolute_store(args)
        self._extract([args])
        left = plan_units([args], self._sources)
        if left:
            raise TransferlabError(f"{len(left)} shard(s) of {args[1].name} are still missing after extraction on Ray")
        features, forwarded, distance = fn(*args[:6], {**args[6], "progress": False}, *args[7:])
        return features, forwarded + self._forwarded.pop(_request_key(args), 0), distance

    # ----------------------------------------------------------------- evaluation
    def map_evaluation(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        calls = list(calls)
        shared: dict[int, Any] = {}  # one object-store copy per distinct argument (task, features, config)

        def ref(value: Any) -> Any:
            if isinstance(value, (str, int, float, type(None))):
                return value
            if id(value) not in shared:
                shared[id(value)] = self.ray.put(value)
            return shared[id(value)]

        # all in flight at once; yielded in call order as the local executor does, so rows
        # are stored in the same order and ties (e.g. Deep Optimal's choice) break the same way
        pending = []
        placements: dict[int, list] = {}  # per call: its feature objects stay alive, so ids stay theirs
        for args in calls:
            extracted = _placement_of(placements, args)
            handle = self._evaluate.remote(fn, self.eval_cpus, args[0], *[ref(a) for a in args[1:]])
            pending.append((handle, extracted))
        for handle, extracted in pending:
            try:
                outcome = self.ray.get(handle)
            except self.ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, TransferlabError):
                    raise cause from None
                raise
            yield stamp(outcome, extracted)

    def shutdown(self) -> None:
        self.pool.stop()
        if self._started:
            self.ray.shutdown()


def _evaluate_call(fn: Callable, cpus: int, *args: Any) -> Any:
    """One evaluation call on a Ray worker, BLAS and torch threads = its CPU request."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(cpus)
    with threadpool_limits(limits=cpus):
        outcome = fn(*args)
    return stamp(outcome, evaluated=this_node())


def _absolute_store(args: tuple) -> tuple:
    """The FeatureStore root as an absolute path: workers must not resolve it themselves."""
    from pathlib import Path

    from transferlab.features.store import default_store_root

    root = args[5]
    return (*args[:5], str(Path(root).absolute() if root else default_store_root()), *args[6:])


def _request_key(args: tuple) -> tuple:
    specs, task, _, _, views = args[:5]
    return tuple(tuple(s) for s in specs), task.name, tuple(views)


def make_executor(name: str, address: str | None = None) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address if address not in (None, "local") else None)
    raise TransferlabError(f"unknown executor {name!r}; use local or ray")


def _threaded(fn: Callable, calls: list[tuple], workers: int) -> Iterator[Any]:
    """Results in call order, computed ``workers`` at a time with one compute thread each."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers, thread_name_prefix="evaluate") as pool:
            yield from pool.map(lambda args: fn(*args), calls)
    finally:
        torch.set_num_threads(previous)
