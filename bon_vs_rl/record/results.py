"""The shared results table: one SQLite file that every bonrl command appends to and `report` reads.

Two tables:
    runs      one row per command run: its resolved config, library versions, git revision, host, pid,
              seed, start/end and status ('running', 'finished', 'failed'; a 'running' row whose process
              is gone reads back as 'unfinished')
    results   long form, one row per evaluation point: best-of-n at one n, an RL run at one step,
              a reward model's evaluation. Core columns are listed in COLUMNS; any other key of a row
              is kept in metrics_json and comes back as its own column from `load`.

Why SQLite: several commands (or a sweep) may write at once. WAL mode lets readers and one writer
proceed together; a busy timeout plus a retry loop absorbs lock contention; every `add_rows` call is
one short transaction, so a killed run keeps each batch of rows it committed and nothing half-written.
A row is keyed by (run_id, method, proxy, n, step, beta), NULLs counting as equal: writing the same key again
replaces the row, so a resumed run never duplicates rows.

A row is bound to the file it points at. `add_rows` records the sha256 of the row's `samples_path` file
(`samples_digest`) as it writes the row, and `check_rows`, which `bonrl report` and `bonrl results` run
before they use a row, leaves out (with one note per run) every row whose file has changed or vanished
since, and every row of a run another run has replaced (`superseded_by`, set by `start_run(supersedes=)` in
the transaction that records the replacing run). So no row is ever re-measured from another run's file.
Readers (`load`, `runs`, `bonrl results`, `bonrl report`) open the file read-only: they never migrate it,
switch its journal mode or create anything.

The file carries a schema version (PRAGMA user_version); MIGRATIONS brings an older file up to date
and a file from a newer bonrl is refused rather than misread.

Public API: resolve_results_path, check_results_file, ResultsStore (start_run, add_rows, finish_run, restamp,
supersede, runs, close), run_context, load, check_rows, export, file_digest, COLUMNS. Imports only the standard library (and bon_vs_rl.config,
which does too) at module level (pandas is imported when a DataFrame is asked for), so every command
can import this cheaply.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bon_vs_rl.errors import ConfigError

if TYPE_CHECKING:  # pandas is imported lazily: `import bon_vs_rl.record.results` must stay fast
    import pandas as pd

__all__ = [
    "COLUMNS", "SCHEMA_VERSION", "ResultsFileError", "ResultsStore", "SchemaVersionError", "check_results_file",
    "check_rows", "export", "file_digest", "load", "resolve_results_path", "run_context",
]

SCHEMA_VERSION = 3
DEFAULT_FILE = "bonrl-results.sqlite"
ENV_VAR = "BONRL_RESULTS"
BUSY_TIMEOUT_S = 30.0

# The core columns of a result row, in order, with their SQLite types. Anything else a caller puts in
# a row (kl_beirami, accuracy, pearson, backbone, ...) goes to metrics_json. The first schema's columns
# are frozen here (MIGRATIONS[0] creates them); later ones are added by their own migration.
_V0_RESULT_TYPES = {
    "method": "TEXT NOT NULL", "n": "INTEGER", "step": "INTEGER", "kl": "REAL", "sqrt_kl": "REAL",
    "kl_se": "REAL", "proxy_mean": "REAL", "proxy_se": "REAL", "gold_mean": "REAL", "gold_se": "REAL",
    "length_mean": "REAL", "sample_count": "INTEGER", "prompt_count": "INTEGER",
    "generated_tokens": "INTEGER", "trained_tokens": "INTEGER", "policy": "TEXT", "proxy": "TEXT",
    "gold": "TEXT", "beta": "REAL", "seed": "INTEGER", "samples_path": "TEXT",
}
# samples_digest (version 3): sha256 of the samples_path file when the row was written.
_RESULT_TYPES = {**_V0_RESULT_TYPES, "samples_digest": "TEXT"}
COLUMNS: list[str] = list(_RESULT_TYPES)

# Keys of a row that the store sets itself; a caller's value for them is ignored.
_RESERVED = {"id", "run_id", "experiment", "created_at", "metrics_json"}

# ----------------------------------------------------------------------------------------------
# 1. Schema and migrations.

# MIGRATIONS[v] holds the statements that take a file at schema version v to version v + 1.
# Version 0 is a new (empty) file, so MIGRATIONS[0] creates the schema. To change the schema: bump
# SCHEMA_VERSION and add MIGRATIONS[SCHEMA_VERSION - 1]; never edit a migration that has shipped.
MIGRATIONS: dict[int, list[str]] = {
    0: [
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, experiment TEXT, command TEXT NOT NULL, config_json TEXT,
            versions_json TEXT, git_rev TEXT, host TEXT, pid INTEGER, seed INTEGER,
            started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL, error TEXT)""",
        "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "run_id TEXT NOT NULL REFERENCES runs(run_id), experiment TEXT, "
        + ", ".join(f"{name} {kind}" for name, kind in _V0_RESULT_TYPES.items())
        + ", created_at TEXT NOT NULL, metrics_json TEXT)",
        # The row key. A plain UNIQUE constraint treats NULLs as distinct (two BoN rows with step NULL
        # would both stay), so the index is on expressions that map NULL to a sentinel.
        "CREATE UNIQUE INDEX results_key ON results "
        "(run_id, method, ifnull(proxy, ''), ifnull(n, -1), ifnull(step, -1))",
        "CREATE INDEX results_experiment ON results (experiment, method)",
    ],
    # β joins the row key: the KL-regularized optimum (method 'tilted') has one point per β and neither
    # n nor step, so under the old key its points of one run and proxy replaced each other. The new key
    # only distinguishes more rows than the old one, so creating it on an old file cannot fail.
    1: [
        "DROP INDEX results_key",
        "CREATE UNIQUE INDEX results_key ON results "
        "(run_id, method, ifnull(proxy, ''), ifnull(n, -1), ifnull(step, -1), ifnull(beta, -1))",
    ],
    # A row is bound to its file (samples_digest), and a run replaced by another (--overwrite) says by which
    # (superseded_by). Rows of older files have no digest: readers keep them, unverified, and say so.
    2: [
        "ALTER TABLE results ADD COLUMN samples_digest TEXT",
        "ALTER TABLE runs ADD COLUMN superseded_by TEXT",
    ],
}


class SchemaVersionError(RuntimeError, ConfigError):
    """The results file was written by a newer bonrl than this one (bad input: exit 2)."""


class ResultsFileError(sqlite3.DatabaseError, ConfigError):
    """--results names something that is not a usable results file (bad input: exit 2)."""


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_results_file(path: str | os.PathLike) -> None:
    """Before any work: `path` is an SQLite file, an empty file, or can be created. A file that is not
    SQLite, a directory, or a path under a file is bad input, named as --results, never a traceback."""
    path = Path(path)
    if path.is_dir():
        raise ResultsFileError(f"results: {path} is a directory; pass a file path to --results")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ResultsFileError(f"results: cannot read {path} ({exc.strerror}); pass another --results") from None
        if header and header != SQLITE_HEADER:  # an empty file is a new database to SQLite
            raise ResultsFileError(f"results: {path} is not a usable results file (not SQLite); pass another "
                                   "--results (or move that file away)")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ResultsFileError(f"results: {path} cannot be created because {parent} is a file; "
                                       "pass another --results")
            return


def _migrate(conn: sqlite3.Connection, path: str | os.PathLike = "results file") -> int:
    """Bring the file behind `conn` up to SCHEMA_VERSION, in one write transaction; returns the old version.

    The version is read inside the (IMMEDIATE) transaction, so two processes opening a new file at once
    cannot both create the schema: the second waits for the first and then finds nothing to do.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the common case: no write lock just to open the file
    with _transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"results: {path} has schema version {version}, newer than this bonrl knows "
                f"({SCHEMA_VERSION}); upgrade bonrl (pip install -U bonrl) or use another --results file"
            )
        for old in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[old]:
                conn.execute(statement)
            # PRAGMA takes no bound parameters; `old + 1` is an int we computed, never user input.
            conn.execute(f"PRAGMA user_version = {old + 1}")
    return version


# ----------------------------------------------------------------------------------------------
# 2. Plumbing: paths, transactions, retries, provenance.


def resolve_results_path(cli_value: str | os.PathLike | None = None) -> Path:
    """--results if given, else $BONRL_RESULTS, else ./bonrl-results.sqlite (in the current directory)."""
    value = cli_value or os.environ.get(ENV_VAR) or DEFAULT_FILE
    return Path(value).expanduser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


T = TypeVar("T")


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _retry(operation: Callable[[], T], attempts: int = 12, base_delay: float = 0.05) -> T:
    """Run `operation`, retrying 'database is locked' with jittered exponential backoff.

    busy_timeout already makes SQLite wait for a lock; this loop is the second line of defence for the
    cases it does not cover (a lock upgrade that SQLite refuses at once to avoid deadlock, a checkpoint).
    `operation` must be a whole transaction, so a retry never repeats half of one.
    """
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, base_delay * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE .. COMMIT, rolled back on any error (a failed COMMIT included).

    IMMEDIATE takes the write lock up front, so a writer waits (busy_timeout) at BEGIN instead of failing
    half-way through when it tries to upgrade a read lock.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _versions() -> dict[str, str]:
    """Versions of what produced the numbers, from package metadata: never imports torch just to ask."""
    from importlib.metadata import PackageNotFoundError, version

    from bon_vs_rl import __version__

    out = {"python": sys.version.split()[0], "bonrl": __version__, "sqlite": sqlite3.sqlite_version}
    for package in ("bonrl", "torch", "transformers", "trl", "accelerate", "peft", "datasets",
                    "numpy", "scipy", "pandas"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    """HEAD of the git checkout this package runs from (+'-dirty' with uncommitted changes), else None.

    Never raises: an installed wheel, a missing git binary or a slow file system all give None.
    """
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def _pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed but not yet reaped)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):  # None, NaN
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    try:  # Linux: a zombie still answers kill(0); its state letter in /proc says it is dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _clean(value: Any) -> Any:
    """Make a value bindable: numpy/torch scalars -> Python, arrays -> lists, paths -> str, NaN -> NULL."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a numpy scalar gives a Python scalar, an array gives a list
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------
# 3. The store: one connection to the file.


class ResultsStore:
    """A connection to the results file. Creates the schema on first use and migrates old files.

    Use as a context manager; every write is its own short transaction, retried on lock contention.
    `read_only=True` (what `bonrl results`, `bonrl report` and `load` use) opens the file as it is: no schema
    is created or migrated, the journal mode is left alone, and any write fails.
    """

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False):
        self.path = resolve_results_path(path)
        self.read_only = read_only
        check_results_file(self.path)
        if read_only:
            if not self.path.is_file():
                raise ResultsFileError(f"results: {self.path} does not exist; run a bonrl command first or pass "
                                       "--results")
            # mode=ro: SQLite itself refuses every write through this connection.
            self.conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                        isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; _transaction() says exactly where each begins.
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if read_only:
                self.version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                if self.version > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"results: {self.path} has schema version {self.version}, newer than this bonrl knows "
                        f"({SCHEMA_VERSION}); upgrade bonrl (pip install -U bonrl) or use another --results file")
                self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # not SQLite: fails here
                return
            # WAL: readers never block the writer nor it them. The mode is stored in the file, so
            # only the first opener really switches it (briefly needing an exclusive lock: retried).
            _retry(lambda: self.conn.execute("PRAGMA journal_mode = WAL").fetchone())
            self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at each WAL checkpoint; safe in WAL
            self.conn.execute("PRAGMA foreign_keys = ON")
            _retry(lambda: _migrate(self.conn, self.path))
            self.version = SCHEMA_VERSION
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_lock_error(exc):
                raise
            raise ResultsFileError(f"results: {self.path} is not a usable results file ({exc}); "
                                   "pass another --results") from exc
        except BaseException:
            self.conn.close()
            raise

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _write(self, sql: str, params: Any = (), many: bool = False) -> int:
        """One statement (or one executemany) as one retried transaction; returns the rows changed."""
        def operation() -> int:
            with _transaction(self.conn) as conn:
                cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
                return cursor.rowcount
        return _retry(operation)

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, command: str, config: dict, seed: int | None = None, experiment: str | None = None,
                  run_id: str | None = None, supersedes: list[str] | tuple[str, ...] = ()) -> str:
        """Record a new run and return its id. Given the id of an existing run, re-open that run
        instead (status back to 'running', this pid): that is how `--resume` continues a run.

        `supersedes`: runs whose files this run replaces (`--overwrite` into their output). They are marked
        superseded by this run in the same transaction that records it, so there is no moment at which the
        table holds both as current; readers leave their rows out (check_rows)."""
        host, pid = socket.gethostname(), os.getpid()
        new_id = run_id or f"{command}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        replaced = [r for r in dict.fromkeys(supersedes) if r and r != new_id]
        provenance = (_json(config), _json(_versions()), git_revision())

        def operation() -> str:
            with _transaction(self.conn) as conn:
                reopened = run_id is not None and conn.execute(
                    "UPDATE runs SET status='running', ended_at=NULL, error=NULL, pid=?, host=? WHERE run_id=?",
                    (pid, host, run_id)).rowcount
                if not reopened:
                    conn.execute(
                        "INSERT INTO runs (run_id, experiment, command, config_json, versions_json, git_rev, host, "
                        "pid, seed, started_at, status) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (new_id, experiment, command, *provenance, host, pid, _clean(seed), _now(), "running"))
                if replaced:
                    conn.executemany("UPDATE runs SET superseded_by=? WHERE run_id=?", [(new_id, r) for r in replaced])
            return new_id

        return _retry(operation)

    def finish_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        """Mark a run 'finished' or 'failed' (with a one-line error) and stamp its end time."""
        if not self._write("UPDATE runs SET status=?, ended_at=?, error=? WHERE run_id=?",
                           (status, _now(), error, run_id)):
            raise KeyError(f"results: no run {run_id!r} in {self.path}")

    def supersede(self, replaced: list[str] | tuple[str, ...], by: str) -> None:
        """Mark runs as replaced by run `by` (an experiment stage that ran again); their rows are left out."""
        self._write("UPDATE runs SET superseded_by=? WHERE run_id=? AND run_id != ?",
                    [(by, r, by) for r in dict.fromkeys(replaced) if r], many=True)

    def restamp(self, run_id: str, config: dict, fields: dict[str, Any]) -> None:
        """A resumed run that was given more --steps: its recorded config and the `fields` of every row it
        has written so far (its `setting`) become the continued run's, in one transaction, so the run stays
        one run with one setting."""
        def operation() -> None:
            with _transaction(self.conn) as conn:
                conn.execute("UPDATE runs SET config_json=? WHERE run_id=?", (_json(config), run_id))
                for name, value in fields.items():
                    if name in _RESULT_TYPES:
                        conn.execute(f"UPDATE results SET {name}=? WHERE run_id=?", (_clean(value), run_id))
                    else:
                        conn.execute("UPDATE results SET metrics_json=json_set(ifnull(metrics_json, '{}'), ?, ?) "
                                     "WHERE run_id=?", (f"$.{name}", _clean(value), run_id))
        _retry(operation)

    def runs(self) -> pd.DataFrame:
        """All runs, oldest first. A 'running' run whose process is gone from this host reads 'unfinished'
        (it was killed: SIGKILL, OOM, a lost node). A run from another host cannot be checked: it stays.
        `superseded_by`: the run that replaced this one's files (--overwrite), else missing."""
        import pandas as pd

        if self.version == 0:  # an empty file: no tables yet
            return pd.DataFrame(columns=["run_id", "experiment", "command", "config_json", "status", "superseded_by"])
        frame = pd.read_sql_query("SELECT * FROM runs ORDER BY started_at, run_id", self.conn)
        if "superseded_by" not in frame:  # a file from before schema version 3
            frame["superseded_by"] = None
        here = socket.gethostname()
        gone = [status == "running" and host == here and not _pid_alive(pid)
                for status, host, pid in zip(frame["status"], frame["host"], frame["pid"])]
        frame.loc[pd.Series(gone, index=frame.index, dtype=bool), "status"] = "unfinished"
        return frame

    # -- results -------------------------------------------------------------------------------

    def add_rows(self, run_id: str, rows: list[dict], supersedes: list[str] | tuple[str, ...] = ()) -> int:
        """Write `rows` for `run_id` in ONE transaction: all of them land, or none. Returns how many.

        Core keys (COLUMNS) become columns; any other key goes to metrics_json. A row's experiment
        defaults to its run's. sqrt_kl is filled from kl when absent (sqrt of max(kl, 0): a negative KL
        estimate is kept as measured, its sqrt is 0). samples_digest is the sha256 of the samples_path
        file as it is now (the writer has just written it), unless the row gives one. A row with the key
        of an existing row replaces it. `supersedes`: runs this one replaces (train-rm --overwrite, whose
        model goes into place at the end), marked so in the same transaction as the rows.
        """
        found = self.conn.execute("SELECT experiment FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if found is None:
            raise KeyError(f"results: no run {run_id!r} in {self.path}; call start_run first")
        # Prepare every row before the transaction opens, so the write lock is held only to insert.
        prepared, digests = [], {}
        for i, row in enumerate(rows):
            if row.get("method") in (None, ""):
                raise ValueError(f"results: row {i} has no 'method' (bon, ppo, rm, ...): {row}")
            core = {name: _clean(row.get(name)) for name in COLUMNS}
            if core["sqrt_kl"] is None and core["kl"] is not None:
                core["sqrt_kl"] = math.sqrt(max(float(core["kl"]), 0.0))
            if core["samples_path"] is not None and core["samples_digest"] is None:
                path = str(core["samples_path"])
                if path not in digests:
                    digests[path] = file_digest(path)
                core["samples_digest"] = digests[path]
            extra = {k: _clean(v) for k, v in row.items() if k not in _RESULT_TYPES and k not in _RESERVED}
            experiment = row["experiment"] if row.get("experiment") is not None else found[0]
            prepared.append((run_id, experiment, *core.values(), _now(), _json(extra) if extra else None))
        columns = ["run_id", "experiment", *COLUMNS, "created_at", "metrics_json"]
        present = self._columns("results")  # SCHEMA_VERSION's, unless a test pins an older one
        if not set(columns) <= present:
            keep = [i for i, c in enumerate(columns) if c in present]
            columns, prepared = [columns[i] for i in keep], [tuple(row[i] for i in keep) for row in prepared]
        # REPLACE deletes the row with the same key (results_key index) and inserts this one.
        sql = f"INSERT OR REPLACE INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        replaced = [(run_id, r) for r in dict.fromkeys(supersedes) if r and r != run_id]

        def operation() -> None:
            with _transaction(self.conn) as conn:
                conn.executemany(sql, prepared)
                if replaced:
                    conn.executemany("UPDATE runs SET superseded_by=? WHERE run_id=?", replaced)

        if prepared or replaced:
            _retry(operation)
        return len(prepared)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def run_context(store: ResultsStore, command: str, config: dict, seed: int | None = None,
                experiment: str | None = None, run_id: str | None = None,
                supersedes: list[str] | tuple[str, ...] = ()) -> Iterator[str]:
    """Start (or resume) a run and yield its id; mark it 'finished' on a normal exit, 'failed' with the
    exception's one-line message when one escapes (the exception is re-raised). A process killed outright
    cannot run this: its run stays 'running' and `runs()` reports it 'unfinished'. `supersedes`: the runs
    whose files this one replaces (ResultsStore.start_run)."""
    run_id = store.start_run(command, config, seed, experiment, run_id, supersedes)
    try:
        yield run_id
    except BaseException as exc:
        lines = str(exc).strip().splitlines()
        store.finish_run(run_id, "failed", f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)
        raise
    store.finish_run(run_id, "finished")


def file_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (streamed), or None when there is no such file."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# 4. Reading: load and export.


def load(path: str | os.PathLike | None = None, **filters: Any) -> pd.DataFrame:
    """Result rows, oldest first, joined with their run's `command`, `run_status` (as `runs()` reports
    it, so killed runs read 'unfinished') and `superseded_by`; metrics_json expanded into one column per
    key. The file is opened read-only (an older one is read as it is, not migrated). Every row comes back,
    checked or not: `check_rows` says which of them still describe their files.

    filters: equality on any column; a list, tuple or set means 'any of'; None means 'is missing'.
    e.g. load(path, method="bon", experiment="demo", run_id=[a, b]). Nothing matching gives an empty
    DataFrame that still has the columns.
    """
    import pandas as pd

    path = resolve_results_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: {path} does not exist; run a bonrl command first or pass --results")
    with ResultsStore(path, read_only=True) as store:
        if store.version == 0:  # an empty file: no tables yet
            frame = pd.DataFrame(columns=["id", "run_id", "experiment", *COLUMNS, "created_at", "metrics_json",
                                          "command", "run_status"])
            runs = store.runs()
        else:
            frame = pd.read_sql_query(
                "SELECT r.*, runs.command AS command, runs.status AS run_status FROM results r "
                "JOIN runs USING (run_id) ORDER BY r.id", store.conn)
            runs = store.runs().set_index("run_id")
    for name in COLUMNS:  # a file from an older schema lacks the later columns
        if name not in frame:
            frame[name] = None
    front = ["id", "run_id", "experiment", *COLUMNS]  # the core columns in their documented order, then the rest
    frame = frame[front + [c for c in frame.columns if c not in front]]
    if len(frame):
        frame["run_status"] = frame["run_id"].map(runs["status"])
        frame["superseded_by"] = frame["run_id"].map(runs["superseded_by"])
    else:
        frame["superseded_by"] = pd.Series(dtype=object)
    extra = pd.DataFrame([json.loads(m) if isinstance(m, str) else {} for m in frame["metrics_json"]],
                         index=frame.index)
    # A metric named like a core column cannot shadow it (add_rows never writes one; a hand edit might).
    frame = pd.concat([frame.drop(columns=["metrics_json"]), extra.drop(columns=[c for c in extra if c in frame])],
                      axis=1)
    for column, wanted in filters.items():
        if column not in frame:  # a metric no row has: nothing matches
            frame = frame.iloc[0:0]
            continue
        if isinstance(wanted, (list, tuple, set, frozenset)):
            frame = frame[frame[column].isin(list(wanted))]
        elif wanted is None:
            frame = frame[frame[column].isna()]
        else:
            frame = frame[frame[column] == wanted]
    return frame.reset_index(drop=True)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column; a metric that is a number in one row and text (or a list) in
    another is written as text rather than failing the export."""
    frame = frame.copy()
    for name in frame.columns:
        if frame[name].dtype == object:
            values = frame[name].dropna()
            kinds = {type(v) for v in values}
            if len(kinds) > 1 or kinds & {list, dict}:
                frame[name] = frame[name].map(
                    lambda v: v if v is None or (isinstance(v, float) and math.isnan(v))
                    else v if isinstance(v, str) else _json(v))
    return frame


def check_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows that still describe their files, and one note per run for those left out.

    Left out: every row of a run another run has replaced (superseded_by: --overwrite, or an experiment
    stage that ran again), and every row whose samples_path file has vanished or whose content no longer
    has the digest recorded when the row was written (someone, or some other run, rewrote it). A row
    without a file is kept as it is; a row from an older bonrl that recorded no digest is kept, unverified,
    with one note saying how many there are. Each distinct file is read once."""
    import pandas as pd

    if frame.empty:
        return frame, []
    keep = pd.Series(True, index=frame.index)
    notes: list[str] = []
    superseded = frame["superseded_by"].notna() if "superseded_by" in frame else pd.Series(False, index=frame.index)
    for run_id, rows in frame[superseded].groupby("run_id", sort=False):
        notes.append(f"run {run_id} was superseded by run {rows['superseded_by'].iloc[0]}, which replaced its files: "
                     f"its {len(rows)} row(s) are left out.")
    keep &= ~superseded
    paths = frame["samples_path"] if "samples_path" in frame else pd.Series(None, index=frame.index)
    recorded = frame["samples_digest"] if "samples_digest" in frame else pd.Series(None, index=frame.index)
    actual = {p: file_digest(p) for p in dict.fromkeys(paths[keep & paths.notna()].astype(str))}
    cause = pd.Series("", index=frame.index)
    unverified = 0
    for i in frame.index[keep & paths.notna()]:
        now, then = actual[str(paths[i])], recorded[i]
        if now is None:
            cause[i] = "is gone"
        elif then is None or (isinstance(then, float) and math.isnan(then)):
            unverified += 1
        elif now != then:
            cause[i] = "changed since the row was written"
    bad = cause != ""
    for run_id, rows in frame[bad].groupby("run_id", sort=False):
        files = list(dict.fromkeys(paths[rows.index].astype(str)))
        causes = " and ".join(dict.fromkeys(cause[rows.index]))
        shown = files[0] + (f" and {len(files) - 1} more" if len(files) > 1 else "")
        notes.append(f"run {run_id}: {len(rows)} row(s) left out, their samples file {causes} ({shown}).")
    if unverified:
        notes.append(f"{unverified} row(s) were written by an older bonrl that recorded no file digest: read "
                     "without checking their samples files.")
    return frame[keep & ~bad], notes


def export(path: str | os.PathLike | None, out_path: str | os.PathLike, overwrite: bool = True,
           **filters: Any) -> Path:
    """Write the (filtered, as in `load`) results whose rows still describe their files (check_rows; a note
    on stderr for each run left out) to a .csv or .parquet file, atomically: a temporary sibling file is
    written and then moved into place, so a reader never sees half a file. `overwrite=False` refuses to
    replace an existing file (bad input)."""
    from bon_vs_rl.record import console
    from bon_vs_rl.record.files import atomic_file

    out_path = Path(out_path)
    if out_path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"export: {out_path} must end in .csv or .parquet")
    if out_path.exists() and not overwrite:
        raise ConfigError(f"export: {out_path} exists; pass --overwrite to replace it, or another --export path")
    frame, notes = check_rows(load(path, **filters))
    for note in notes:
        console.note("note: " + note)
    with atomic_file(out_path) as tmp:
        if out_path.suffix == ".parquet":
            _parquet_safe(frame).to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return out_path
