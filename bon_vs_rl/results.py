"""The shared results table: one SQLite file that every bonrl command appends to and `report` reads.

Two tables:
    runs      one row per command run: its resolved config, library versions, git revision, seed,
              start/end and status ('running', 'finished', 'failed'; a 'running' row whose process
              is gone reads back as 'unfinished')
    results   long form, one row per evaluation point: best-of-n at one n, an RL run at one step,
              a reward model's evaluation. Core columns are listed in COLUMNS; any other metric of a
              row is kept in metrics_json and comes back as its own column from `load`.

Why SQLite: several commands (or `accelerate launch` workers, or a sweep) may write at once. WAL mode
lets readers and one writer proceed together; a busy timeout plus a retry loop absorbs lock
contention; every `add_rows` call is one transaction, so a killed run leaves each batch of rows it
committed and nothing half-written. A row is keyed by (run_id, method, proxy, n, step): writing the
same key again replaces the row, so a resumed run never duplicates rows.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_FILE = "bonrl-results.sqlite"

COLUMNS = [
    "method", "n", "step", "kl", "sqrt_kl", "kl_se", "proxy_mean", "proxy_se", "gold_mean", "gold_se",
    "length_mean", "sample_count", "prompt_count", "generated_tokens", "trained_tokens",
    "policy", "proxy", "gold", "beta", "seed", "samples_path",
]

_RESULT_TYPES = {
    "method": "TEXT NOT NULL", "n": "INTEGER", "step": "INTEGER", "kl": "REAL", "sqrt_kl": "REAL",
    "kl_se": "REAL", "proxy_mean": "REAL", "proxy_se": "REAL", "gold_mean": "REAL", "gold_se": "REAL",
    "length_mean": "REAL", "sample_count": "INTEGER", "prompt_count": "INTEGER",
    "generated_tokens": "INTEGER", "trained_tokens": "INTEGER", "policy": "TEXT", "proxy": "TEXT",
    "gold": "TEXT", "beta": "REAL", "seed": "INTEGER", "samples_path": "TEXT",
}

# Version -> statements that bring a file from the previous version up to this one.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, experiment TEXT, command TEXT NOT NULL, config_json TEXT,
            versions_json TEXT, git_rev TEXT, host TEXT, pid INTEGER, seed INTEGER,
            started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL, error TEXT)""",
        "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "run_id TEXT NOT NULL REFERENCES runs(run_id), experiment TEXT, "
        + ", ".join(f"{name} {kind}" for name, kind in _RESULT_TYPES.items())
        + ", created_at TEXT NOT NULL, metrics_json TEXT)",
        "CREATE UNIQUE INDEX results_key ON results "
        "(run_id, method, ifnull(proxy, ''), ifnull(n, -1), ifnull(step, -1))",
        "CREATE INDEX results_experiment ON results (experiment, method)",
    ],
}


def resolve_results_path(cli_value: str | os.PathLike | None = None) -> Path:
    """--results, else $BONRL_RESULTS, else ./bonrl-results.sqlite."""
    value = cli_value or os.environ.get("BONRL_RESULTS") or DEFAULT_FILE
    return Path(value).expanduser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _versions() -> dict[str, str]:
    """Versions of what produced the numbers, without importing torch just to ask."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for package in ("bonrl", "torch", "transformers", "trl", "accelerate", "peft", "numpy", "pandas"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    """HEAD of the checkout this package runs from, or None (an installed wheel, no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean(value: Any) -> Any:
    """numpy scalars -> Python; NaN stays a float (SQLite stores it as NULL)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class ResultsStore:
    """A connection to the results file; create tables on first use, migrate old files."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_results_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self._retry(lambda: self.conn.execute("PRAGMA journal_mode = WAL"))
        self._retry(self._migrate)

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, operation, attempts: int = 20):
        """Retry on 'database is locked' with jittered backoff (busy_timeout covers most cases)."""
        for attempt in range(attempts):
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"results: {self.path} has schema version {version}, newer than this bonrl knows "
                    f"({SCHEMA_VERSION}); upgrade bonrl"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, command: str, config: dict, seed: int | None = None, experiment: str | None = None,
                  run_id: str | None = None) -> str:
        """Record a run (or re-open `run_id` to resume it) and return its id."""
        if run_id is not None:
            existing = self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if existing:
                def reopen():
                    with self._transaction() as conn:
                        conn.execute("UPDATE runs SET status='running', ended_at=NULL, error=NULL, pid=?, host=? "
                                     "WHERE run_id=?", (os.getpid(), socket.gethostname(), run_id))
                self._retry(reopen)
                return run_id
        run_id = run_id or f"{command}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        row = (run_id, experiment, command, json.dumps(config, sort_keys=True, default=str),
               json.dumps(_versions(), sort_keys=True), git_revision(), socket.gethostname(), os.getpid(),
               seed, _now(), "running")

        def insert():
            with self._transaction() as conn:
                conn.execute("INSERT INTO runs (run_id, experiment, command, config_json, versions_json, git_rev, "
                             "host, pid, seed, started_at, status) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        self._retry(insert)
        return run_id

    def finish_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        def update():
            with self._transaction() as conn:
                conn.execute("UPDATE runs SET status=?, ended_at=?, error=? WHERE run_id=?",
                             (status, _now(), error, run_id))
        self._retry(update)

    def runs(self):
        import pandas as pd

        frame = pd.read_sql_query("SELECT * FROM runs ORDER BY started_at", self.conn)
        here = socket.gethostname()
        gone = (frame["status"] == "running") & frame.apply(
            lambda r: r["host"] == here and not _pid_alive(r["pid"]), axis=1
        ) if len(frame) else frame["status"] == "running"
        frame.loc[gone, "status"] = "unfinished"
        return frame

    # -- results -------------------------------------------------------------------------------

    def add_rows(self, run_id: str, rows: list[dict]) -> int:
        """Write `rows` in one transaction: all of them land, or none."""
        experiment_row = self.conn.execute("SELECT experiment FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if experiment_row is None:
            raise KeyError(f"results: no run {run_id!r}; call start_run first")
        prepared = []
        for row in rows:
            if "method" not in row:
                raise ValueError("results: every row needs a 'method'")
            core = {name: _clean(row.get(name)) for name in COLUMNS}
            if core["sqrt_kl"] is None and core["kl"] is not None:
                core["sqrt_kl"] = math.sqrt(max(float(core["kl"]), 0.0))
            extra = {k: _clean(v) for k, v in row.items() if k not in _RESULT_TYPES and k != "experiment"}
            experiment = row.get("experiment", experiment_row[0])
            prepared.append((run_id, experiment, *core.values(), _now(),
                             json.dumps(extra, sort_keys=True, default=str) if extra else None))
        columns = ["run_id", "experiment", *COLUMNS, "created_at", "metrics_json"]
        sql = f"INSERT OR REPLACE INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

        def insert():
            with self._transaction() as conn:
                conn.executemany(sql, prepared)
        self._retry(insert)
        return len(prepared)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def run_context(store: ResultsStore, command: str, config: dict, seed: int | None = None,
                experiment: str | None = None, run_id: str | None = None) -> Iterator[str]:
    """A run that is marked 'finished' on success and 'failed' (with its error) when an exception escapes."""
    run_id = store.start_run(command, config, seed, experiment, run_id)
    try:
        yield run_id
    except BaseException as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        store.finish_run(run_id, "failed", f"{type(exc).__name__}: {message}")
        raise
    store.finish_run(run_id, "finished")


def load(path: str | os.PathLike | None = None, **filters: Any):
    """Result rows joined with their run's command and status, as a DataFrame; filters by equality
    (a list or tuple means 'any of'), e.g. load(path, method='bon', experiment='demo')."""
    import pandas as pd

    path = resolve_results_path(path)
    if not path.exists():
        raise FileNotFoundError(f"results: {path} does not exist; run a bonrl command first or pass --results")
    with ResultsStore(path) as store:
        frame = pd.read_sql_query(
            "SELECT r.*, runs.command AS command, runs.status AS run_status FROM results r "
            "JOIN runs USING (run_id) ORDER BY r.id", store.conn)
        statuses = store.runs().set_index("run_id")["status"]
    if len(frame):
        frame["run_status"] = frame["run_id"].map(statuses)
        extra = pd.DataFrame([json.loads(m) if isinstance(m, str) else {} for m in frame["metrics_json"]],
                             index=frame.index)
        frame = pd.concat([frame.drop(columns=["metrics_json"]), extra.drop(columns=[c for c in extra
                                                                                       if c in frame])], axis=1)
    else:
        frame = frame.drop(columns=["metrics_json"])
    for column, wanted in filters.items():
        if column not in frame:
            return frame.iloc[0:0]
        if isinstance(wanted, (list, tuple, set)):
            frame = frame[frame[column].isin(list(wanted))]
        else:
            frame = frame[frame[column] == wanted]
    return frame.reset_index(drop=True)


def export(path: str | os.PathLike | None, out_path: str | os.PathLike, **filters: Any) -> Path:
    """Write the (filtered) results to .csv or .parquet, atomically."""
    from bon_vs_rl.files import atomic_file

    out_path = Path(out_path)
    frame = load(path, **filters)
    with atomic_file(out_path) as tmp:
        if out_path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif out_path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            raise ValueError(f"export: {out_path} must end in .csv or .parquet")
    return out_path
