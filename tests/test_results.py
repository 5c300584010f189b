"""The shared results table: schema and migrations, replace-on-key, atomic batches, concurrent writers,
killed runs, run_context, path precedence, load filters and export."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bon_vs_rl.record import results as R

REPO = Path(__file__).resolve().parent.parent
# Child processes import bon_vs_rl from this checkout whatever their working directory.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _row(n, gold=0.0, **extra):
    return {"method": "bon", "n": n, "kl": 0.1 * n, "gold_mean": gold, "proxy": "rm:a", **extra}


def _raw(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# Schema and migrations.


def test_new_file_gets_the_schema_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "er" / "r.sqlite"  # parent directories are created
    with R.ResultsStore(path) as store:
        conn = store.conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == R.SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "results"} <= tables
        result_columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
        # Columns added by a later schema version come after those of the first (ALTER TABLE ADD COLUMN).
        assert result_columns == ["id", "run_id", "experiment", *R.COLUMNS[:-1], "created_at", "metrics_json",
                                  "samples_digest"]
        run_columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        assert {"run_id", "experiment", "command", "config_json", "versions_json", "git_rev", "host", "pid",
                "seed", "started_at", "ended_at", "status", "error", "superseded_by"} <= run_columns


def test_migration_from_an_empty_file_and_a_hand_made_version_0_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # zero bytes: SQLite reads it as a new database, version 0
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE notes (x TEXT)")  # some other table; user_version left at 0
    conn.execute("INSERT INTO notes VALUES ('kept')")
    conn.commit()
    conn.close()
    for path in (empty, old):
        with R.ResultsStore(path) as store:
            assert R.load(path).empty
            store.add_rows(store.start_run("sample", {}), [_row(1)])
        assert _raw(path, "PRAGMA user_version") == [(R.SCHEMA_VERSION,)]
        assert len(R.load(path)) == 1
    assert _raw(old, "SELECT x FROM notes") == [("kept",)]


def test_migrate_runs_each_step_once_and_in_order(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        store.add_rows(store.start_run("sample", {}), [_row(1)])
    # A future schema version 4: the version-3 file is brought up, its rows kept.
    monkeypatch.setitem(R.MIGRATIONS, 3, ["ALTER TABLE results ADD COLUMN note TEXT",
                                          "UPDATE results SET note = 'migrated'"])
    monkeypatch.setattr(R, "SCHEMA_VERSION", 4)
    conn = sqlite3.connect(path, isolation_level=None)
    assert R._migrate(conn, path) == 3
    assert R._migrate(conn, path) == 4  # nothing left to do: the step did not run twice
    conn.close()
    assert _raw(path, "PRAGMA user_version") == [(4,)]
    assert _raw(path, "SELECT method, note FROM results") == [("bon", "migrated")]


def test_a_version_1_file_keeps_its_rows_and_gets_beta_in_the_row_key(tmp_path, monkeypatch):
    """Version 1 keyed rows by (run, method, proxy, n, step): the tilted optimum's points (one per β, no n,
    no step) replaced each other. After the migration they are distinct rows; same-β rows still replace."""
    path = tmp_path / "v1.sqlite"
    monkeypatch.setattr(R, "SCHEMA_VERSION", 1)
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {})
        store.add_rows(run, [_row(1, gold=0.1)])
        store.add_rows(run, [{"method": "tilted", "beta": 1.0, "gold_mean": 1.0},
                             {"method": "tilted", "beta": 2.0, "gold_mean": 2.0}])
        assert R.load(path, method="tilted")["beta"].tolist() == [2.0]  # the old key lost β = 1
    monkeypatch.undo()
    assert R.SCHEMA_VERSION == 3
    with R.ResultsStore(path) as store:
        assert _raw(path, "PRAGMA user_version") == [(3,)]
        store.add_rows(run, [{"method": "tilted", "beta": 1.0, "gold_mean": 1.0},
                             {"method": "tilted", "beta": 0.5, "gold_mean": 0.5},
                             {"method": "tilted", "beta": 0.5, "gold_mean": 0.6}])
    frame = R.load(path)
    assert frame.loc[frame["method"] == "bon", "gold_mean"].tolist() == [0.1]
    tilted = frame[frame["method"] == "tilted"].sort_values("beta")
    assert tilted["beta"].tolist() == [0.5, 1.0, 2.0] and tilted["gold_mean"].tolist() == [0.6, 1.0, 2.0]


def test_a_file_from_a_newer_bonrl_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    R.ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {R.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(R.SchemaVersionError, match="newer than this bonrl"):
        R.ResultsStore(path)
    with pytest.raises(RuntimeError, match="upgrade bonrl"):
        R.load(path)
    assert _raw(path, "PRAGMA user_version") == [(R.SCHEMA_VERSION + 1,)]  # left untouched


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_text("x" * 4096)
    with pytest.raises(sqlite3.DatabaseError, match="not a usable results file"):
        R.ResultsStore(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run a bonrl command first"):
        R.load(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()  # load never creates the file


# ----------------------------------------------------------------------------------------------
# Writing and reading rows.


def test_roundtrip_filters_and_metrics_expansion(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {"n": "1,2"}, seed=3, experiment="demo")
        assert store.add_rows(run, [_row(1, kl_beirami=0.05, backbone="minilm"),
                                    _row(2, kl_beirami=0.1, samples_path=tmp_path / "s.jsonl")]) == 2
        other = store.start_run("ppo", {}, seed=0, experiment="other")
        store.add_rows(other, [{"method": "ppo", "step": np.int64(0), "kl": np.float32(-0.25), "gold_mean": 0.3,
                                "proxy_mean": float("nan"), "experiment": "override"}])
    frame = R.load(path)
    assert len(frame) == 3 and list(frame["method"]) == ["bon", "bon", "ppo"]
    assert list(frame.columns[:len(R.COLUMNS) + 3]) == ["id", "run_id", "experiment", *R.COLUMNS]
    assert {"command", "run_status", "created_at", "kl_beirami", "backbone"} <= set(frame.columns)
    assert "metrics_json" not in frame
    assert frame["command"].tolist() == ["sample", "sample", "ppo"]
    assert frame["run_status"].tolist() == ["running"] * 3  # this process is alive

    bon = R.load(path, method="bon", experiment="demo")  # the row's experiment defaults to its run's
    assert bon["kl_beirami"].tolist() == [0.05, 0.1]
    assert bon["backbone"].iloc[0] == "minilm" and pd.isna(bon["backbone"].iloc[1])
    assert bon["sqrt_kl"].round(6).tolist() == [round(0.1**0.5, 6), round(0.2**0.5, 6)]
    assert bon["samples_path"].tolist()[1] == str(tmp_path / "s.jsonl")
    ppo = R.load(path, run_id=other)
    # A row's own experiment wins; a negative KL estimate is stored as measured, its sqrt_kl is 0;
    # NaN is stored as NULL; numpy scalars come back as plain numbers.
    assert ppo["experiment"].item() == "override"
    assert ppo["kl"].item() == pytest.approx(-0.25) and ppo["sqrt_kl"].item() == 0.0
    assert pd.isna(ppo["proxy_mean"].item()) and ppo["step"].item() == 0

    assert len(R.load(path, run_id=[run, other])) == 3
    assert R.load(path, n=(1, 4))["n"].tolist() == [1]
    assert R.load(path, n=None)["method"].tolist() == ["ppo"]
    assert R.load(path, backbone="minilm")["n"].tolist() == [1]
    for nothing in (R.load(path, method="rm"), R.load(path, no_such_metric=1)):
        assert nothing.empty and {"gold_mean", "run_id", "command", "run_status"} <= set(nothing.columns)


def test_same_key_replaces_instead_of_duplicating(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {})
        store.add_rows(run, [_row(1, gold=0.1), _row(2, gold=0.2)])
        store.add_rows(run, [_row(2, gold=0.25)])  # same (run, method, proxy, n, step=NULL)
        store.add_rows(run, [{**_row(2, gold=0.9), "proxy": "rm:b"}])  # another proxy: another key
        # step set, n and proxy NULL: NULLs compare equal in the key, so the later row wins.
        store.add_rows(run, [{"method": "ppo", "step": 5, "gold_mean": 1.0},
                             {"method": "ppo", "step": 5, "gold_mean": 2.0}])
        store.add_rows(run, [{"method": "ppo", "step": 5, "gold_mean": 3.0}])
    frame = R.load(path)
    assert len(frame) == 4
    assert frame.loc[frame["proxy"] == "rm:a", "gold_mean"].tolist() == [0.1, 0.25]
    assert frame.loc[frame["method"] == "ppo", "gold_mean"].tolist() == [3.0]


def test_a_batch_with_a_bad_row_writes_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {})
        store.add_rows(run, [_row(1, gold=0.5)])
        # The bad row is last: the rows before it were already inserted when SQLite refused it.
        with pytest.raises(sqlite3.Error, match="type 'object' is not supported"):
            store.add_rows(run, [_row(2), _row(1, gold=9.0), {**_row(3), "gold_mean": object()}])
        with pytest.raises(ValueError, match="method"):
            store.add_rows(run, [_row(4), {"n": 5}])
        with pytest.raises(KeyError, match="start_run"):
            store.add_rows("no-such-run", [_row(6)])
        store.add_rows(run, [_row(7)])  # the connection is usable after a rolled-back batch
    frame = R.load(path)
    assert frame["n"].tolist() == [1, 7] and frame["gold_mean"].tolist() == [0.5, 0.0]


def test_resume_reopens_the_same_run_without_duplicating_rows(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("ppo", {"beta": 0.1}, seed=1)
        assert run.startswith("ppo-") and len(run.split("-")[-1]) == 6
        store.add_rows(run, [{"method": "ppo", "step": s, "gold_mean": s} for s in (0, 10)])
        store.finish_run(run, "failed", "killed")
        with R.run_context(store, "ppo", {"beta": 0.1}, seed=1, run_id=run) as resumed:
            assert resumed == run
            assert store.runs().set_index("run_id").loc[run, "status"] == "running"
            store.add_rows(run, [{"method": "ppo", "step": s, "gold_mean": s + 0.5} for s in (10, 20)])
        runs = store.runs()
        assert runs["run_id"].tolist() == [run] and runs["status"].item() == "finished"
        assert pd.isna(runs["error"].item())
        assert store.start_run("ppo", {}, run_id="chosen-id") == "chosen-id"  # a new run with a given id
        with pytest.raises(KeyError, match="no run 'no-such-run'"):
            store.finish_run("no-such-run")
    assert R.load(path, run_id=run)["gold_mean"].tolist() == [0, 10.5, 20.5]


def test_run_context_marks_failed_runs_and_records_provenance(tmp_path):
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RuntimeError, match="reward was nan"):
            with R.run_context(store, "ppo", {"beta": 0.1}, seed=4, experiment="exp") as failed:
                raise RuntimeError("reward was nan\nmore detail")
        with R.run_context(store, "sample", {}, seed=None) as finished:
            pass
        runs = store.runs().set_index("run_id")
    assert runs.loc[failed, "status"] == "failed" and runs.loc[failed, "error"] == "RuntimeError: reward was nan"
    assert runs.loc[finished, "status"] == "finished" and pd.isna(runs.loc[finished, "error"])
    assert runs.loc[failed, "experiment"] == "exp" and runs.loc[failed, "command"] == "ppo"
    assert '"beta": 0.1' in runs.loc[failed, "config_json"] and '"python"' in runs.loc[failed, "versions_json"]
    assert runs.loc[failed, "seed"] == 4 and runs.loc[failed, "ended_at"] and runs.loc[failed, "pid"] == os.getpid()


def test_importing_the_module_and_recording_a_run_never_imports_torch(tmp_path):
    code = ("import sys; from bon_vs_rl.record import results as R; s = R.ResultsStore(sys.argv[1]); "
            "s.start_run('x', {}); s.close(); print('torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.sqlite")], env=CHILD_ENV,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_path_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BONRL_RESULTS", raising=False)
    assert R.resolve_results_path(None) == Path("bonrl-results.sqlite")
    with R.ResultsStore() as store:  # the default lands in the current directory
        assert store.path.resolve() == tmp_path / "bonrl-results.sqlite"
    assert (tmp_path / "bonrl-results.sqlite").is_file()
    monkeypatch.setenv("BONRL_RESULTS", str(tmp_path / "env.sqlite"))
    assert R.resolve_results_path(None) == tmp_path / "env.sqlite"
    assert R.resolve_results_path(str(tmp_path / "cli.sqlite")) == tmp_path / "cli.sqlite"
    assert R.resolve_results_path(tmp_path / "cli.sqlite") == tmp_path / "cli.sqlite"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_roundtrip(tmp_path, suffix):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {}, experiment="demo")
        store.add_rows(run, [_row(1, gold=0.5, pearson=0.9, tag=1), _row(4, gold=0.7, tag="text")])
        store.add_rows(run, [{"method": "rm", "accuracy": 0.8}])
    out = R.export(path, tmp_path / "out" / f"table{suffix}", method="bon")
    back = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert back["gold_mean"].tolist() == [0.5, 0.7] and back["n"].tolist() == [1, 4]
    assert back["pearson"].tolist()[0] == 0.9 and back["experiment"].tolist() == ["demo", "demo"]
    assert [str(t) for t in back["tag"]] == ["1", "text"]  # a mixed-type metric survives Parquet as text
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind
    with pytest.raises(ValueError, match=".csv or .parquet"):
        R.export(path, tmp_path / "table.xlsx")


# ----------------------------------------------------------------------------------------------
# Concurrency, locks and killed processes.


def test_retry_backs_off_on_locked_and_gives_up_on_other_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert R._retry(flaky, base_delay=0.001) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise sqlite3.OperationalError("no such table: nope")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        R._retry(broken, base_delay=0.001)
    assert len(calls) == 1

    def always_locked():
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        R._retry(always_locked, attempts=3, base_delay=0.001)


def test_a_writer_that_meets_a_held_lock_backs_off_until_it_is_released(tmp_path, monkeypatch):
    """SQLite's own wait (busy_timeout) is set to nothing here, so the writer meets the held lock at once
    and the retry loop must back off. Each back-off is the signal that the writer met the lock: the
    other connection releases it at the second, so the order of events is fixed, not left to a clock."""
    path = tmp_path / "r.sqlite"
    monkeypatch.setattr(R, "BUSY_TIMEOUT_S", 0)
    with R.ResultsStore(path) as store:
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        run = store.start_run("sample", {})
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        holder.execute("INSERT INTO runs (run_id, command, started_at, status) "
                       "VALUES ('held', 'x', '-', 'finished')")
        back_offs = []

        def back_off(seconds: float) -> None:
            back_offs.append(seconds)
            if len(back_offs) == 2:
                holder.execute("COMMIT")

        monkeypatch.setattr(R.time, "sleep", back_off)
        store.add_rows(run, [_row(1)])
        holder.close()
    assert len(back_offs) == 2 and all(0 < b <= 2.0 for b in back_offs)
    assert len(R.load(path)) == 1  # written once, after the holder's transaction
    assert sorted(_raw(path, "SELECT run_id FROM runs")) == sorted([(run,), ("held",)])


WRITER = textwrap.dedent("""
    import sys
    from bon_vs_rl.record import results as R
    path, worker = sys.argv[1], int(sys.argv[2])
    with R.ResultsStore(path) as store:
        print("ready", flush=True)  # imported and connected: its first write comes next
        with R.run_context(store, "sample", {"worker": worker}) as run:
            for batch in range(25):
                store.add_rows(run, [{"method": "bon", "n": 2 * batch + i, "proxy": f"w{worker}"} for i in (1, 2)])
""")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    R.ResultsStore(path).close()
    # Hold the write lock until every writer says its first write comes next, so they start together
    # against a locked file, wait for it (busy_timeout), then contend for it batch by batch.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], env=CHILD_ENV,
                              stdout=subprocess.PIPE, text=True) for w in range(4)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
    holder.execute("COMMIT")
    holder.close()
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    for p in procs:
        p.stdout.close()
    frame = R.load(path)
    assert len(frame) == 200 and frame.groupby("proxy").size().tolist() == [50] * 4
    assert not frame.duplicated(["run_id", "n"]).any() and frame["run_id"].nunique() == 4
    with R.ResultsStore(path) as store:
        runs = store.runs()
    assert len(runs) == 4 and (runs["status"] == "finished").sum() == 4


KILLED = textwrap.dedent("""
    import sys
    from bon_vs_rl.record import results as R
    store = R.ResultsStore(sys.argv[1])
    run = store.start_run("ppo", {})
    store.add_rows(run, [{"method": "ppo", "step": s} for s in range(3)])
    print(run, flush=True)  # the rows are committed
    sys.stdin.read()  # alive, mid-run, until the test kills it
""")


def test_killed_run_keeps_committed_rows_and_reads_unfinished(tmp_path):
    path = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
    run = proc.stdout.readline().strip()
    assert run.startswith("ppo-")
    with R.ResultsStore(path) as store:  # still alive: still running
        assert store.runs()["status"].tolist() == ["running"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    frame = R.load(path)
    assert frame["step"].tolist() == [0, 1, 2] and frame["run_status"].tolist() == ["unfinished"] * 3
    with R.ResultsStore(path) as store:
        assert store.runs()["status"].tolist() == ["unfinished"]
    # On disk the row is as the killed process left it: 'running', no end time.
    assert _raw(path, "SELECT status, ended_at FROM runs") == [("running", None)]


def test_a_running_row_from_another_host_is_left_alone(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("ppo", {})
        store.conn.execute("UPDATE runs SET host='elsewhere', pid=999999999 WHERE run_id=?", (run,))
        assert store.runs()["status"].tolist() == ["running"]
