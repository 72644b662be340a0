"""A real multi-raylet Ray cluster on this machine, for tests and benchmarks of the
multi-node path: one ``ray start --head`` plus ``ray start --address`` per extra node, each
with its own CPU count, a private temp dir, port and auth token, and stopped by process
group (never ``ray stop``, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferlab.errors import TransferlabError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """``with LocalCluster([1, 1]) as cluster:`` two raylets of 1 CPU; ``cluster.env`` is
    the environment a driver needs (``RAY_ADDRESS``, token auth) for ``--address auto``."""

    def __init__(self, cpus: list[int], object_store_mb: int = 100, startup_s: float = 240.0,
                 extra_env: dict[str, str] | None = None):
        self.cpus = cpus
        self.object_store_mb = object_store_mb
        self.startup_s = startup_s
        self.temp = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))  # short: socket paths have a limit
        self.port = _free_port()
        self.env = {**os.environ, **(extra_env or {}), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": f"127.0.0.1:{self.port}"}
        self.processes: list[subprocess.Popen] = []
        self.nodes: list[str] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        for number, cpus in enumerate(self.cpus):
            role = ["--head", "--port", str(self.port), "--include-dashboard", "false",
                    "--temp-dir", str(self.temp / "t")] if number == 0 else ["--address", f"127.0.0.1:{self.port}"]
            log = open(self.temp / f"node{number}.log", "w")  # noqa: SIM115 (the child keeps it)
            self.processes.append(subprocess.Popen(
                [ray, "start", *role, "--num-cpus", str(cpus), "--object-store-memory",
                 str(self.object_store_mb * 2**20), "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                 "--block"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
            self._wait_for(number + 1)

    def _wait_for(self, count: int) -> None:
        deadline = time.monotonic() + self.startup_s
        while True:
            self.nodes = self.alive_nodes()
            if len(self.nodes) >= count:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                logs = "\n".join(p.read_text()[-1500:] for p in sorted(self.temp.glob("node*.log")))
                raise TransferlabError(f"the local Ray cluster did not start {count} node(s):\n{logs}")
            time.sleep(2)

    def alive_nodes(self) -> list[str]:
        """Node ids the head reports alive (asked from a separate process: this one stays
        free of a Ray connection)."""
        code = ("import ray; ray.init(address='auto', log_to_driver=False); "
                "print(' '.join(sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])))")
        try:
            done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            return []
        return done.stdout.split() if done.returncode == 0 else []

    def descendants(self, node: int | None = None) -> dict[int, str]:
        """pid -> command line (Ray process titles) of everything the cluster started (or
        node number ``node`` alone: 0 is the head)."""
        parents: dict[int, int] = {}
        commands: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        ours = {p.pid for p in self.processes} if node is None else {self.processes[node].pid}
        while True:
            more = {pid for pid, parent in parents.items() if parent in ours and pid not in ours}
            if not more:
                break
            ours |= more
        return {pid: commands.get(pid, "") for pid in ours}

    def kill_node(self, node: int) -> None:
        """SIGKILL one node's `ray start` and everything it started: a lost machine."""
        process = self.processes[node]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(30)

    def stop(self) -> None:
        """Stop every `ray start` this cluster ran and what it started (its process group)."""
        for process in reversed(self.processes):
            _stop_group(process)
        self.processes = []
        shutil.rmtree(self.temp, ignore_errors=True)


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # workers that outlived their raylet are in the same group
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
