"""The shared results table: schema, replace-on-key, atomic batches, concurrent writers, killed runs."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from bon_vs_rl import results as R


def _row(n, gold=0.0, **extra):
    return {"method": "bon", "n": n, "kl": 0.1 * n, "gold_mean": gold, "proxy": "rm:a", **extra}


def test_roundtrip_filters_and_metrics_expansion(tmp_path):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {"n": "1,2"}, seed=3, experiment="demo")
        assert store.add_rows(run, [_row(1, kl_beirami=0.05), _row(2, kl_beirami=0.1)]) == 2
        other = store.start_run("ppo", {}, seed=0, experiment="other")
        store.add_rows(other, [{"method": "ppo", "step": 0, "kl": -0.01, "gold_mean": 0.3}])
    frame = R.load(path)
    assert len(frame) == 3 and list(frame["method"]) == ["bon", "bon", "ppo"]
    bon = R.load(path, method="bon", experiment="demo")
    assert bon["kl_beirami"].tolist() == [0.05, 0.1]
    assert bon["sqrt_kl"].round(6).tolist() == [round(0.1**0.5, 6), round(0.2**0.5, 6)]
    assert R.load(path, run_id=[run, other]).shape[0] == 3
    assert R.load(path, method="rm").empty and "gold_mean" in R.load(path, method="rm")
    # A negative KL estimate is stored as measured (never clipped); its sqrt_kl is 0.
    assert R.load(path, method="ppo")["kl"].item() == -0.01


def test_same_key_replaces_instead_of_duplicating(tmp_path):
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        run = store.start_run("sample", {})
        store.add_rows(run, [_row(1, gold=0.1), _row(2, gold=0.2)])
        store.add_rows(run, [_row(2, gold=0.25)])
        store.add_rows(run, [{"method": "ppo", "step": 5, "gold_mean": 1.0}, {"method": "ppo", "step": 5, "gold_mean": 2.0}])
    frame = R.load(tmp_path / "r.sqlite")
    assert frame.loc[frame["method"] == "bon", "gold_mean"].tolist() == [0.1, 0.25]
    assert frame.loc[frame["method"] == "ppo", "gold_mean"].tolist() == [2.0]


def test_a_batch_with_a_bad_row_writes_nothing(tmp_path):
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        run = store.start_run("sample", {})
        with pytest.raises(sqlite3.Error):
            store.add_rows(run, [_row(1), {**_row(2), "gold_mean": object()}])
        with pytest.raises(ValueError):
            store.add_rows(run, [_row(3), {"n": 4}])
    assert R.load(tmp_path / "r.sqlite").empty


def test_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("BONRL_RESULTS", raising=False)
    assert R.resolve_results_path(None).name == "bonrl-results.sqlite"
    monkeypatch.setenv("BONRL_RESULTS", str(tmp_path / "env.sqlite"))
    assert R.resolve_results_path(None) == tmp_path / "env.sqlite"
    assert R.resolve_results_path(str(tmp_path / "cli.sqlite")) == tmp_path / "cli.sqlite"


def test_run_context_marks_failed_runs_and_records_provenance(tmp_path):
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RuntimeError):
            with R.run_context(store, "ppo", {"beta": 0.1}, seed=4) as run:
                raise RuntimeError("reward was nan\nmore")
        runs = store.runs().set_index("run_id")
    assert runs.loc[run, "status"] == "failed" and runs.loc[run, "error"] == "RuntimeError: reward was nan"
    assert '"beta": 0.1' in runs.loc[run, "config_json"] and '"python"' in runs.loc[run, "versions_json"]
    assert runs.loc[run, "seed"] == 4 and runs.loc[run, "ended_at"]


def test_schema_version_and_migration_from_version_0(tmp_path):
    path = tmp_path / "old.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()  # user_version 0
    with R.ResultsStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == R.SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {R.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this bonrl"):
        R.ResultsStore(path)


WRITER = textwrap.dedent("""
    import sys
    from bon_vs_rl import results as R
    path, worker = sys.argv[1], int(sys.argv[2])
    with R.ResultsStore(path) as store:
        with R.run_context(store, "sample", {"worker": worker}) as run:
            for batch in range(25):
                store.add_rows(run, [{"method": "bon", "n": 2 * batch + i, "proxy": f"w{worker}"} for i in (1, 2)])
""")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    frame = R.load(path)
    assert len(frame) == 200 and frame.groupby("proxy").size().tolist() == [50] * 4
    with R.ResultsStore(path) as store:
        assert (store.runs()["status"] == "finished").sum() == 4


KILLED = textwrap.dedent("""
    import sys, time
    from bon_vs_rl import results as R
    store = R.ResultsStore(sys.argv[1])
    run = store.start_run("ppo", {})
    store.add_rows(run, [{"method": "ppo", "step": s} for s in range(3)])
    print("committed", flush=True)
    time.sleep(60)
""")


def test_killed_run_keeps_committed_rows_and_reads_unfinished(tmp_path):
    path = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "committed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert R.load(path)["step"].tolist() == [0, 1, 2]
    with R.ResultsStore(path) as store:
        assert store.runs()["status"].tolist() == ["unfinished"]


def test_resume_reopens_the_same_run(tmp_path):
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        run = store.start_run("ppo", {})
        store.finish_run(run, "failed", "killed")
        assert store.start_run("ppo", {}, run_id=run) == run
        assert store.runs().set_index("run_id").loc[run, "status"] == "running"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_roundtrip(tmp_path, suffix):
    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        store.add_rows(store.start_run("sample", {}), [_row(1, gold=0.5), _row(4, gold=0.7)])
    out = R.export(path, tmp_path / f"out{suffix}")
    back = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert back["gold_mean"].tolist() == [0.5, 0.7] and back["n"].tolist() == [1, 4]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run a bonrl command first"):
        R.load(tmp_path / "none.sqlite")
