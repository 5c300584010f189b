"""Prompt sets: the openings the policy continues, with a fixed train/eval split.

    builtin                     the project's own offline set (bon_vs_rl/data/prompts.txt): short English
                                openings of reviews, stories, letters, descriptions...
    FILE.txt                    one prompt per line (a file without a suffix too; other types are refused)
    FILE.jsonl[:COLUMN]         one JSON object per line; COLUMN defaults to "prompt", then "text"
    FILE.csv[:COLUMN]           a CSV with a header; same COLUMN rule
    hf:DATASET:COLUMN[:SPLIT]   a Hugging Face dataset (online users), e.g. hf:stanfordnlp/imdb:text

The split is by position and never depends on the seed: every fifth prompt (index % 5 == 4) is held
out for evaluation. Train-rm trains on train prompts and measures on eval prompts; best-of-n and the
RL evaluations use the eval prompts, RL training the train prompts — so no number is measured on the
prompts a proxy or a policy was trained on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bon_vs_rl.config.base import EVAL_PROMPTS
from bon_vs_rl.errors import ConfigError

READABLE = ("", ".txt", ".jsonl", ".csv")  # file types --prompts reads (no suffix: text, one prompt per line)
BUILTIN = Path(__file__).parent.parent / "data" / "prompts.txt"
EVAL_EVERY = 5


def _read_column(rows: list[dict], column: str | None, source: str) -> list[str]:
    if not rows:
        return []
    names = [column] if column else ["prompt", "text"]
    for name in names:
        if name in rows[0]:
            return [str(row[name]) for row in rows]
    raise ConfigError(f"prompts: {source} has no column {' or '.join(names)!r}; give FILE:COLUMN")


def read_prompts(spec: str) -> list[str]:
    """Every prompt a spec names, in order, blank ones dropped."""
    if spec == "builtin":
        lines = BUILTIN.read_text(encoding="utf-8").splitlines()
    elif spec.startswith("hf:"):
        parts = spec.split(":")
        if len(parts) < 3:
            raise ConfigError(f"prompts: {spec!r} must look like hf:DATASET:COLUMN[:SPLIT]")
        dataset, column = parts[1], parts[2]
        split = parts[3] if len(parts) > 3 else "train"
        try:
            import datasets

            data = datasets.load_dataset(dataset, split=split)
        except Exception as exc:  # offline, unknown id, unknown split: all bad input
            raise ConfigError(
                f"prompts: cannot load dataset {dataset!r} ({type(exc).__name__}); when offline use "
                "--prompts builtin or a local file"
            ) from None
        if column not in data.column_names:
            raise ConfigError(f"prompts: dataset {dataset} has no column {column!r}; columns: {data.column_names}")
        lines = [str(x) for x in data[column]]
    else:
        path_text, column = spec, None
        for suffix in (".jsonl", ".csv"):
            if suffix + ":" in spec:
                path_text, column = spec.split(suffix + ":", 1)
                path_text += suffix
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompts: file {path_text!r} not found; use builtin, a file path or hf:DATASET:COLUMN")
        if path.suffix.lower() not in READABLE:  # a .pdf or .parquet read as lines would be noise, not prompts
            raise ConfigError(f"prompts: {path_text} is a {path.suffix} file; --prompts reads .txt (one prompt per "
                              "line), .jsonl or .csv files, builtin or hf:DATASET:COLUMN")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            lines = _read_column(rows, column, path_text)
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                lines = _read_column(list(csv.DictReader(handle)), column, path_text)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts: {spec!r} holds no prompts; give a non-empty prompt set")
    return prompts


def load_prompts(spec: str, split: str, limit: int = 0) -> list[str]:
    """The `split` ('train', 'eval' or 'all') of a prompt set; `limit` > 0 keeps the first `limit`."""
    prompts = read_prompts(spec)
    if split == "eval":
        prompts = [p for i, p in enumerate(prompts) if i % EVAL_EVERY == EVAL_EVERY - 1]
    elif split == "train":
        prompts = [p for i, p in enumerate(prompts) if i % EVAL_EVERY != EVAL_EVERY - 1]
    elif split != "all":
        raise ValueError(f"split must be train, eval or all, not {split!r}")
    if not prompts:
        raise ConfigError(f"prompts: the {split} split of {spec!r} is empty; give at least {EVAL_EVERY} prompts")
    if split == "eval" and limit > len(prompts) and limit != EVAL_PROMPTS:  # fewer would be measured, silently
        raise ConfigError(f"eval_prompts: {limit} is more than the {len(prompts)} held-out prompts of {spec!r}; "
                          f"pass --eval-prompts {len(prompts)} or fewer (0 = all of them)")
    return prompts[:limit] if limit > 0 else prompts


def apply_chat_template(tokenizer, prompts: list[str], enabled: bool) -> list[str]:
    """Wrap prompts as a user turn plus the assistant header, when asked and the tokenizer has a template."""
    if not enabled:
        return prompts
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_template: this policy's tokenizer has no chat template; drop --chat-template")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
