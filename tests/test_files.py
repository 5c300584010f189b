"""File helpers: atomic writes that keep the umask's modes, output-path checks, content fingerprints."""

import os
import stat

import pandas as pd
import pytest

from bon_vs_rl.errors import ConfigError
from bon_vs_rl.record import files


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_written_files_and_directories_follow_the_umask(tmp_path, umask):
    """mkstemp/mkdtemp create 0600/0700 whatever the umask; outputs must not be owner-only by accident."""
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)):
        umask(mask)
        out = tmp_path / f"mask-{mask:o}"
        files.write_text(out / "a.txt", "x")
        files.write_json(out / "b.json", {"x": 1})
        files.write_parquet(out / "c.parquet", pd.DataFrame({"x": [1]}))
        with files.atomic_directory(out / "checkpoint") as tmp:
            (tmp / "weights").write_text("w")
        assert [mode(out / n) for n in ("a.txt", "b.json", "c.parquet")] == [file_mode] * 3, oct(mask)
        assert mode(out / "checkpoint") == dir_mode and mode(out / "checkpoint" / "weights") == file_mode


def test_an_output_path_under_a_file_is_bad_input(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"^output: .*notes.txt/runs cannot be created because .*notes.txt "
                                            r"is a file; pass a directory path to --output$"):
        files.check_directory(tmp_path / "notes.txt" / "runs", "output")
    with pytest.raises(ConfigError, match="is a file, not a directory; pass a directory to --output"):
        files.check_directory(tmp_path / "notes.txt", "output")
    files.check_directory(tmp_path / "new" / "deeper", "output")  # creatable: fine, and nothing created
    assert not (tmp_path / "new").exists()


def test_fingerprint_follows_content_not_names(tmp_path):
    gold = tmp_path / "gold.py"
    gold.write_text("def f(p, c): return [1.0] * len(c)\n")
    first = files.fingerprint(gold)
    gold.write_text("def f(p, c): return [2.0] * len(c)\n")
    assert files.fingerprint(gold) != first
    gold.write_text("def f(p, c): return [1.0] * len(c)\n")
    assert files.fingerprint(gold) == first
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = files.fingerprint(model)
    (model / "config.json").write_text('{"layers": 2}')
    assert files.fingerprint(model) != before
    assert files.fingerprint(tmp_path / "missing") is None


def test_an_output_directory_names_the_run_that_owns_it_and_overwrite_clears_only_its_files(tmp_path):
    assert files.output_owner(tmp_path / "new", ("checkpoints",)) is None
    old = tmp_path / "old"  # written before runs left a marker: its files still show a run was there
    (old / "checkpoints").mkdir(parents=True)
    assert files.output_owner(old, ("checkpoints", "eval_samples")) == "an earlier run's files"
    files.claim_output(old, "ppo", "ppo-1")
    assert files.output_owner(old, ()) == "run ppo-1"
    (old / "nonfinite-step-000001.parquet").write_text("x")
    (old / "notes.txt").write_text("mine")
    files.clear_outputs(old, ("checkpoints", "nonfinite-*.parquet"))
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]
