"""Reaching a Ray cluster and checking it can do the work: connection (token auth, the
environment workers need), the alive nodes, and the shared-store check every node passes
before any compute.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError

# Environment a worker needs to find the same caches, datasets and weights as the driver.
FORWARDED_ENV = ("TRANSFERLAB_CACHE", "TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME")
PROBE_DIR = "ray-probe"
PROBE_TIMEOUT_S = 300.0


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """``ray.init`` once; True when this call started (and so owns) the Ray runtime."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                              "runtime_env": worker_environment()}
    if address:
        kwargs["address"] = address
        _reachable(address)
        _token_auth_if_available()
    else:
        kwargs["include_dashboard"] = False
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except Exception as exc:  # connection refused, bad address, authentication, ...
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        hint = ""
        if "auth" in text.lower() or "token" in text.lower():
            hint = " (a cluster started by `ray start` wants RAY_AUTH_MODE=token and its token in ~/.ray/auth_token)"
        raise TransferlabError(f"cannot start or reach Ray ({address or 'local'}): {text}{hint}") from None
    _ray_messages_to_stderr()
    return True


def _ray_messages_to_stderr() -> None:
    """Ray prints cluster messages (e.g. "a worker died ...") on the driver's stdout, where
    ``--json`` output goes; send them to stderr. (Ray internals: skipped if they move.)"""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_transferlab", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._transferlab = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (``ray.init`` retries for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto" and the like: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise TransferlabError(f"cannot reach Ray at {address}: {exc.strerror or exc} "
                               "(is the head node up? `ray start --head` prints its address)") from None


def _token_auth_if_available() -> None:
    """Ray >= 2.5x clusters from `ray start` require token auth; connect with the user's
    token when there is one and the mode is not set explicitly."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def worker_environment() -> dict[str, Any]:
    """runtime_env for every task and actor: the driver's transferlab checkout first on the
    path (where a node sees it: one machine or shared storage; elsewhere the installed copy
    is used and the version check below catches a mismatch) and the cache variables."""
    import transferlab

    package_parent = str(Path(transferlab.__file__).resolve().parent.parent)
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    from transferlab.paths import cache_root

    env["TRANSFERLAB_CACHE"] = str(cache_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, os.environ.get("PYTHONPATH", "")] if p)
    return {"env_vars": env}


def alive_nodes() -> list[dict[str, Any]]:
    """Alive nodes with resources: ``[{node_id, ip, cpus, gpus}]`` in a stable order."""
    import ray

    out = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        out.append({"node_id": node["NodeID"], "ip": node.get("NodeManagerAddress", "?"),
                    "cpus": int(resources.get("CPU", 0)), "gpus": int(resources.get("GPU", 0))})
    return sorted(out, key=lambda n: n["node_id"])


def is_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def node_label(node_id: str | None, ip: str | None = None) -> str:
    return f"node {str(node_id)[:12]}" + (f" ({ip})" if ip else "")


def _probe_node(roots: list[str], token: str) -> dict[str, Any]:
    """On one node (a Ray task pinned to it): ``probe_roots`` with its node id."""
    import socket

    import ray

    import transferlab

    node_id = ray.get_runtime_context().get_node_id()
    return {"node_id": node_id, "hostname": socket.gethostname(), "problems": probe_roots(roots, token, node_id),
            "version": transferlab.__version__}


def probe_roots(roots: list[str], token: str, node_id: str) -> list[str]:
    """Read the driver's probe file under each root and write this node's own; the problems."""
    problems = []
    for root in roots:
        folder = Path(root) / PROBE_DIR
        try:
            seen = (folder / f"{token}.driver").read_text()
        except OSError as exc:
            problems.append(f"{root}: the driver's probe file is not visible here ({exc.strerror or exc})")
            continue
        if seen != token:
            problems.append(f"{root}: holds another probe file than the driver's (not the same storage)")
            continue
        try:
            (folder / f"{token}.{node_id}").write_text(node_id)
        except OSError as exc:
            problems.append(f"{root}: not writable here ({exc.strerror or exc})")
    return problems


def check_shared_store(roots: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every alive node writes and reads back a probe file under each root (the cache and
    the FeatureStore): a node that cannot see the driver's storage is named in one line,
    before any compute. Returns the nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import transferlab

    roots = [str(Path(r).absolute()) for r in dict.fromkeys(str(r) for r in roots)]
    token = uuid.uuid4().hex
    for root in roots:
        folder = Path(root) / PROBE_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{token}.driver").write_text(token)
        except OSError as exc:
            raise TransferlabError(f"cannot write the shared-store probe under {root}: {exc.strerror or exc}") from None
    nodes = alive_nodes()
    probe = ray.remote(num_cpus=0, max_retries=1)(_probe_node)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["node_id"], soft=False))
            .remote([str(r) for r in roots], token): n for n in nodes}
    problems: list[str] = []
    try:
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for ref in waiting:
            node = refs[ref]
            problems.append(f"{node_label(node['node_id'], node['ip'])}: did not answer the shared-store check "
                            f"within {PROBE_TIMEOUT_S:.0f} s")
        for ref in ready:
            node = refs[ref]
            where = node_label(node["node_id"], node["ip"])
            try:
                answer = ray.get(ref)
            except Exception as exc:  # the node died or could not run the probe
                problems.append(f"{where}: the shared-store check failed ({str(exc).strip().splitlines()[-1]})")
                continue
            where = f"{where} [{answer['hostname']}]"
            problems.extend(f"{where} cannot share the feature store: {p}" for p in answer["problems"])
            if answer["version"] != transferlab.__version__:
                problems.append(f"{where} runs transferlab {answer['version']}, the driver "
                                f"{transferlab.__version__}: install the same version on every node")
            for root in roots:
                if not answer["problems"] and not (Path(root) / PROBE_DIR / f"{token}.{node['node_id']}").is_file():
                    problems.append(f"{where} cannot share the feature store: {root}: what it wrote is not visible "
                                    "to the driver (a local folder of the same name, not shared storage)")
    finally:
        for root in roots:
            for path in (Path(root) / PROBE_DIR).glob(f"{token}.*"):
                path.unlink(missing_ok=True)
    if problems:
        raise TransferlabError("the Ray cluster cannot run this study; the FeatureStore and cache must be on "
                               "storage every node shares:\n  " + "\n  ".join(problems))
    print(f"transferlab: {len(nodes)} Ray node(s) share the feature store", file=sys.stderr)
    return nodes
