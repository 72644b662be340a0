"""Executors: where study work runs. Local (in-process) or Ray (a local or remote cluster).

Both run the same two top-level functions, so results are identical:
``extract_pair`` (the expensive forward pass; asks for a GPU on Ray when the cluster has
one) and ``evaluate_jobs`` (probes/retrieval, CPU). No home-made scheduling: Ray places
the tasks; the driver only collects results and writes them to the ResultStore.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from transferlab.errors import TransferlabError


class LocalExecutor:
    """Runs everything in this process. Extraction uses every core through torch's threads;
    evaluation calls (probe fits, rankings) run side by side on a thread pool, one BLAS/torch
    thread each: a sweep's many small fits scale poorly inside one call, well across calls
    (measured: a 36-fit sweep's evaluation on 2 cores, see benchmarks/bench_study.py)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def run_extraction(self, fn: Callable, *args: Any) -> Any:
        return fn(*args)

    def map_evaluation(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        calls = list(calls)
        workers = min(len(calls), self._workers())
        if workers <= 1:
            for args in calls:
                yield fn(*args)
            return
        yield from _threaded(fn, calls, workers)

    def _workers(self) -> int:
        import os

        import torch

        if self.workers is not None:
            return self.workers
        if torch.cuda.is_available():  # fits share one GPU: keep them in order
            return 1
        return min(8, os.cpu_count() or 1)

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """Extraction as Ray tasks (one GPU each when the cluster has GPUs), evaluation as CPU
    tasks; results stream back to the driver as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise TransferlabError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except Exception as exc:  # connection refused, bad address, ...
                raise TransferlabError(f"cannot start or reach Ray ({address or 'local'}): {exc}") from None
            self._started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        self.extract_options = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": 1}

    def run_extraction(self, fn: Callable, *args: Any) -> Any:
        remote = self.ray.remote(**self.extract_options)(fn)
        return self.ray.get(remote.remote(*args))

    def map_evaluation(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        remote = self.ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(*args) for args in calls]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def shutdown(self) -> None:
        if self._started:
            self.ray.shutdown()


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
