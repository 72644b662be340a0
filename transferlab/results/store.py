"""ResultStore: one SQLite row per (source, task, factor values), written in transactions.

A study may be killed at any moment; every result it finished is already committed, so a
restart asks ``done_keys()`` and skips those jobs. The database is in WAL mode, so the report
and ``transferlab results`` can read while a study writes. ``lock()`` keeps a second study
out of the same run directory.

Values are stored as JSON text (factors, metrics, timings, package versions), so the schema
never changes when a study adds a factor; ``SCHEMA_VERSION`` guards the table layout itself.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferlab.atomic import atomic_write_text
from transferlab.errors import TransferlabError
from transferlab.results.encoding import dumps, finite_or_none
from transferlab.results.factors import ordered_factors  # reading order of the CSV columns
from transferlab.results.items import pack_items, unpack_items
from transferlab.results.provenance import PROVENANCE_KEYS
from transferlab.results.rows import ResultRow, current_only, job_key_of

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"
LOCK_NAME = ".lock"

_COLUMNS = (
    "job_key", "source", "task", "factors", "metric", "value", "metrics", "standard",
    "seconds", "extra", "config_hash", "versions", "git_commit", "seed", "device", "created",
    "val_value", "selection", "low", "high", "identity", "placement",
)  # fmt: skip
# Columns added after the first schema: older stores get them by ALTER TABLE on open.
_ADDED_COLUMNS = {
    "val_value": "REAL", "selection": "TEXT", "low": "REAL", "high": "REAL", "identity": "TEXT", "placement": "TEXT",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    job_key     TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    task        TEXT NOT NULL,
    factors     TEXT NOT NULL,
    metric      TEXT NOT NULL,
    value       REAL,
    metrics     TEXT NOT NULL,
    standard    INTEGER NOT NULL,
    seconds     TEXT NOT NULL,
    extra       TEXT NOT NULL,
    config_hash TEXT,
    versions    TEXT,
    git_commit  TEXT,
    seed        INTEGER,
    device      TEXT,
    created     REAL NOT NULL,
    placement   TEXT
);
CREATE INDEX IF NOT EXISTS results_task ON results (task);
CREATE TABLE IF NOT EXISTS items (job_key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """``RUN_DIR/results.sqlite``: results, study metadata, and the run directory's lock.

    One instance per process (a forked child reconnects by itself). ``create=False`` opens an
    existing store only, for readers such as ``transferlab results``.
    """

    def __init__(self, run_dir: str | Path, *, provenance: dict | None = None, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.provenance = dict(provenance or {})
        if not create and not self.path.is_file():
            raise TransferlabError(
                f"{self.run_dir}: no results here ({DB_NAME} missing); run `transferlab study` first")
        if create:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 60000")
            mode = _switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise TransferlabError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn, self._pid = conn, os.getpid()
            with self._transaction() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                have = {row[1] for row in cur.execute("PRAGMA table_info(results)").fetchall()}
                for name, sql_type in _ADDED_COLUMNS.items():
                    if name not in have:
                        cur.execute(f"ALTER TABLE results ADD COLUMN {name} {sql_type}")
                found = cur.execute("SELECT version FROM schema_version").fetchall()
                if not found:
                    cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif found[0][0] > SCHEMA_VERSION:
                    raise TransferlabError(
                        f"{self.path}: written by a newer transferlab (schema {found[0][0]}, "
                        f"this one reads {SCHEMA_VERSION}); upgrade transferlab"
                    )
        except sqlite3.OperationalError:  # disk full, I/O error, locked, read-only: not a damaged file
            self._conn = None
            raise
        except sqlite3.DatabaseError as exc:
            self._conn = None
            raise TransferlabError(f"{self.path}: not a transferlab results database ({exc})") from exc
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: all or nothing."""
        with self._mutex:
            conn = self._conn if self._conn is not None and self._pid == os.getpid() else self._connect()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._mutex:
            return self._connect().execute(sql, params).fetchall()

    # ------------------------------------------------------------------ results
    def has(self, job_key: str) -> bool:
        return bool(self._query("SELECT 1 FROM results WHERE job_key = ?", (job_key,)))

    def done_keys(self) -> set[str]:
        return {key for (key,) in self._query("SELECT job_key FROM results")}

    def count(self) -> int:
        """Number of results stored."""
        return int(self._query("SELECT COUNT(*) FROM results")[0][0])

    def add(self, row: ResultRow) -> None:
        """Insert (or replace, by job_key) one result in its own transaction."""
        self.add_many([row])

    def add_many(self, rows: list[ResultRow]) -> None:
        """Insert (or replace) several results in one transaction: all of them or none."""
        created = time.time()
        with self._transaction() as cur:
            for number, row in enumerate(rows, 1):
                record = self._record(row, number, created)
                cur.execute(
                    f"INSERT OR REPLACE INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    record,
                )
                if row.items is not None:
                    cur.execute("INSERT OR REPLACE INTO items (job_key, data) VALUES (?, ?)",
                                (record[0], pack_items(row.items)))

    def _record(self, row: ResultRow, number: int, created: float) -> tuple:
        where = f"result row {number} ({getattr(row, 'source', '?')} on {getattr(row, 'task', '?')})"
        if not isinstance(row, ResultRow):
            raise TransferlabError(f"{where}: expected a ResultRow, got {type(row).__name__}")
        for name in ("source", "task", "metric"):
            if not isinstance(getattr(row, name), str) or not getattr(row, name):
                raise TransferlabError(f"{where}: {name} must be a non-empty string")
        for name in ("factors", "metrics", "seconds", "extra"):
            if not isinstance(getattr(row, name), dict):
                raise TransferlabError(f"{where}: {name} must be a dict, got {type(getattr(row, name)).__name__}")
        try:
            value = float(row.value)
        except (TypeError, ValueError) as exc:
            raise TransferlabError(f"{where}: value {row.value!r} is not a number") from exc
        encoded = {}
        for name in ("factors", "metrics", "seconds", "extra"):
            try:
                encoded[name] = dumps(getattr(row, name))
            except (TypeError, ValueError) as exc:
                raise TransferlabError(f"{where}: {name} are not JSON-able ({exc})") from exc
        key = row.job_key or job_key_of(row.source, row.task, row.factors)
        prov = self.provenance
        seed = prov.get("seed")
        return (
            key, row.source, row.task, encoded["factors"], row.metric,
            None if math.isnan(value) else value, encoded["metrics"], int(bool(row.standard)),
            encoded["seconds"], encoded["extra"], prov.get("config_hash"),
            dumps(prov["versions"]) if prov.get("versions") is not None else None,
            prov.get("git_commit"), int(seed) if seed is not None else None, prov.get("device"), created,
            _finite(row.val_value), row.selection or None, _finite(row.low), _finite(row.high), row.identity or None,
            dumps(row.placement) if row.placement else None,
        )  # fmt: skip

    def rows(self, task: str | None = None) -> list[dict[str, Any]]:
        """Every result (of one task if given) as a dict: ResultRow fields plus provenance."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM results"
        params: tuple = ()
        if task is not None:
            sql += " WHERE task = ?"
            params = (task,)
        out = []
        for record in self._query(sql + " ORDER BY created, rowid", params):
            item = dict(zip(_COLUMNS, record, strict=True))
            for name in ("factors", "metrics", "seconds", "extra"):
                item[name] = json.loads(item[name])
            item["versions"] = json.loads(item["versions"]) if item["versions"] is not None else None
            item["placement"] = json.loads(item["placement"]) if item["placement"] else {}
            item["value"] = float("nan") if item["value"] is None else float(item["value"])
            item["standard"] = bool(item["standard"])
            for name in ("val_value", "low", "high"):
                item[name] = float("nan") if item[name] is None else float(item[name])
            item["selection"] = item["selection"] or ""
            item["identity"] = item["identity"] or ""
            out.append(item)
        return out

    def items(self, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per-item test data and bootstrap replicates of rows (all, or those of ``keys``),
        verified on read: a damaged entry is left out (its row then has no paired interval)."""
        found = self._query("SELECT job_key, data FROM items")
        wanted = None if keys is None else set(keys)
        out = {}
        for key, blob in found:
            if wanted is not None and key not in wanted:
                continue
            unpacked = unpack_items(blob)
            if unpacked is not None:
                out[key] = unpacked
        return out

    def current_rows(self, task: str | None = None) -> list[dict[str, Any]]:
        """The rows of the latest study configuration run here (``meta["current_keys"]``);
        every row when no study recorded its keys."""
        return current_only(self.rows(task), self.meta())

    # ------------------------------------------------------------------ exports
    def export_rows(self, task: str | None = None) -> list[dict[str, Any]]:
        """``rows()`` with NaN as None and ``created`` as ISO 8601 UTC: strict JSON."""
        out = []
        for item in self.rows(task):
            item = finite_or_none(item)
            item["created"] = _iso(item["created"])
            out.append(item)
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """All results as a JSON list (written atomically to ``path`` if given)."""
        text = json.dumps(self.export_rows(), indent=2, allow_nan=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_csv(self, path: str | Path | None = None, *, current: bool = False) -> str:
        """All results as CSV, one column per factor, timing and scalar metric.

        Columns: job_key, source, task, every factor (``factor.<name>``), metric, value,
        standard, scalar companion metrics (``metrics.<name>``), ``seconds.<step>``, scalar
        ``extra.<name>``, then provenance. Lists (per-class values) stay in the JSON export.
        """
        rows = self.export_rows()
        if current:
            rows = current_only(rows, self.meta())
        factor_names = ordered_factors(ordered_keys(r["factors"] for r in rows))
        metric_names = ordered_keys({k: v for k, v in r["metrics"].items() if _scalar(v)} for r in rows)
        second_names = ordered_keys(r["seconds"] for r in rows)
        extra_names = ordered_keys({k: v for k, v in r["extra"].items() if _scalar(v)} for r in rows)
        header = (
            ["job_key", "source", "task"] + [f"factor.{n}" for n in factor_names]
            + ["metric", "value", "low", "high", "val_value", "selection", "standard"]
            + [f"metrics.{n}" for n in metric_names] + [f"seconds.{n}" for n in second_names]
            + [f"extra.{n}" for n in extra_names] + list(PROVENANCE_KEYS)
        )  # fmt: skip
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow(
                [r["job_key"], r["source"], r["task"]]
                + [_cell(r["factors"].get(n, "")) for n in factor_names]
                + [r["metric"], _cell(r["value"]), _cell(r["low"]), _cell(r["high"]), _cell(r["val_value"]),
                   r["selection"], int(r["standard"])]
                + [_cell(r["metrics"].get(n, "")) for n in metric_names]
                + [_cell(r["seconds"].get(n, "")) for n in second_names]
                + [_cell(r["extra"].get(n, "")) for n in extra_names]
                + [_cell(r[k]) for k in PROVENANCE_KEYS]
            )  # fmt: skip
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    # ------------------------------------------------------------------ metadata
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able value under ``key`` (e.g. "config", "name", "tasks")."""
        try:
            text = dumps(value)
        except (TypeError, ValueError) as exc:
            raise TransferlabError(f"{self.path}: meta value for {key!r} is not JSON-able ({exc})") from exc
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text))

    def get_meta(self, key: str, default: Any = None) -> Any:
        found = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(found[0][0]) if found else default

    def meta(self) -> dict[str, Any]:
        return {key: json.loads(text) for key, text in self._query("SELECT key, value FROM meta ORDER BY key")}

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory exclusively; a second study gets a clear error, not a race.

        ``flock`` is released by the kernel when the holder dies, so a killed study never
        leaves a stale lock; the pid in the file is only for the message.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.run_dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise TransferlabError(
                    f"run directory {self.run_dir} is in use by another study (pid {holder}); "
                    "wait for it to finish or use another run directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _switch_to_wal(conn: sqlite3.Connection, attempts: int = 50) -> str:
    """``PRAGMA journal_mode = WAL`` on a database another process is creating can fail at
    once with "database is locked" (SQLite's busy handler does not cover the mode switch),
    so retry briefly instead of failing the second of two simultaneous writers."""
    for attempt in range(attempts):
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def ordered_keys(dicts: Any) -> list[str]:
    """Keys of several dicts in first-seen order."""
    seen: dict[str, None] = {}
    for d in dicts:
        for key in d:
            seen.setdefault(key, None)
    return list(seen)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value
