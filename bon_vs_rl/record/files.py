"""All-or-nothing file writes: a results file, a checkpoint or a sample file is never left half-written.

Everything is written to a temporary sibling first and moved into place with `os.replace`, which is
atomic on POSIX file systems: a reader (or a crash) sees the old file or the new one, never a part.

`tempfile.mkstemp`/`mkdtemp` create their files 0600 and directories 0700 whatever the umask, and the
rename keeps that mode, so every output would be owner-only. The temporary siblings made here get
the mode an ordinary `open()` or `mkdir()` would have given (0666 / 0777 less the umask) before they
are renamed into place.

`check_directory` is the before-any-work check for an output path: it must be a directory or
creatable as one (no file in the way, at the path or above it). `output_owner`/`claim_output`/
`clear_outputs` keep one run per ppo/rl output directory (OUTPUT/bonrl_run.json names it), and
`fingerprint` identifies a file's or directory's content for caches keyed by what a spec names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bon_vs_rl.errors import ConfigError


def umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it can only be read by setting it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # what open(path, "w") would have created
    os.close(fd)
    return Path(name)


def make_tmp_dir(parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new temporary directory in `parent`, with the mode mkdir() would give it (not mkdtemp's 0700)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    tmp.chmod(0o777 & ~umask())
    return tmp


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block finishes."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike, frame) -> None:
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory to fill; it replaces `path` (and anything there) only on success."""
    path = Path(path)
    tmp = make_tmp_dir(path.parent, f".{path.name}.")
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_directory(path: str | os.PathLike, name: str) -> None:
    """ConfigError, naming the option, unless `path` is a directory or could be made one.

    Called before any work, so a typo'd --output fails in a second, not after an hour of sampling."""
    path = Path(path).expanduser()
    flag = "--" + name.replace("_", "-")
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{name}: {path} is a file, not a directory; pass a directory to {flag}")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name}: {path} cannot be created because {parent} is a file; "
                                  f"pass a directory path to {flag}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{name}: cannot create {path}: {parent} is not writable; pass another {flag}")
            return


# ----------------------------------------------------------------------------------------------
# One run per output directory (ppo, rl): a second run into the same --output is refused unless it
# resumes the first or says --overwrite, so no results row ever points at another run's files.

RUN_MARKER = "bonrl_run.json"  # {"command", "run_id"}: which run owns an output directory


def output_owner(output: str | os.PathLike, evidence: tuple[str, ...] = ()) -> str | None:
    """What already wrote into `output`, for an error message: 'run ID' from the marker, "an earlier run's
    files" when only its files (`evidence`, names or glob patterns) show; None for a fresh directory."""
    output = Path(output)
    try:
        return "run " + str(json.loads((output / RUN_MARKER).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if output.is_dir() and any(next(output.glob(pattern), None) is not None for pattern in evidence):
        return "an earlier run's files"
    return None


def owner_run_id(output: str | os.PathLike) -> str | None:
    """The id of the run that owns `output` (its marker), or None: what an --overwrite run supersedes."""
    try:
        return str(json.loads((Path(output) / RUN_MARKER).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def replaced_runs(output: str | os.PathLike, continuing: bool) -> list[str]:
    """The run an --overwrite replaces (none when this run continues its own checkpoint): marked superseded in
    the transaction that records the new run, before its files go."""
    owner = None if continuing else owner_run_id(output)
    return [owner] if owner else []


def claim_output(output: str | os.PathLike, command: str, run_id: str) -> None:
    write_json(Path(output) / RUN_MARKER, {"command": command, "run_id": run_id})


def clear_outputs(output: str | os.PathLike, patterns: tuple[str, ...]) -> None:
    """Delete what an earlier run wrote into `output` (--overwrite): the named files and directories only,
    never anything else the user keeps there."""
    output = Path(output)
    for pattern in (*patterns, RUN_MARKER):
        for path in output.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Content fingerprints, for caches keyed by what a spec names rather than by the spec's text.

SMALL_FILE = 1 << 20  # files up to 1 MiB are hashed whole; larger ones (weights) by size and mtime


def fingerprint(path: Path) -> str | None:
    """sha256 identifying a file (its content) or a directory (every file's name and content; files over
    SMALL_FILE by size and modification time: hashing gigabytes of weights per run would cost more than
    the cache saves, and rewriting a file changes its mtime, so a change can only miss the cache, never
    hit a stale entry). None when `path` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for entry in entries:
        stat = entry.stat()
        digest.update(str(entry.relative_to(path) if entry != path else entry.name).encode() + b"\0")
        if stat.st_size <= SMALL_FILE:
            digest.update(entry.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(b"\0")
    return digest.hexdigest()
