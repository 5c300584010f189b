"""Prompt sets: the built-in set, local files, the fixed split, chat templates and errors."""

import json

import pytest

from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import prompts


def test_builtin_set_is_large_varied_and_split_without_overlap():
    every = prompts.load_prompts("builtin", "all")
    train, evaluation = prompts.load_prompts("builtin", "train"), prompts.load_prompts("builtin", "eval")
    assert len(every) >= 300 and len(set(every)) == len(every)
    assert len(train) + len(evaluation) == len(every) and not set(train) & set(evaluation)
    assert len(evaluation) == len(every) // 5
    assert evaluation == prompts.load_prompts("builtin", "eval")  # fixed: no seed involved
    assert prompts.load_prompts("builtin", "eval", limit=7) == evaluation[:7]


def test_text_jsonl_and_csv_files(tmp_path):
    lines = [f"Opening number {i} was" for i in range(10)]
    (tmp_path / "p.txt").write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")
    assert prompts.load_prompts(str(tmp_path / "p.txt"), "all") == lines
    assert prompts.load_prompts(str(tmp_path / "p.txt"), "eval") == [lines[4], lines[9]]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(lines)))
    assert prompts.load_prompts(str(tmp_path / "p.jsonl"), "all") == lines
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in lines))
    assert prompts.load_prompts(str(tmp_path / "q.jsonl") + ":body", "all") == lines
    (tmp_path / "p.csv").write_text("id,opening\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(lines)))
    assert prompts.load_prompts(str(tmp_path / "p.csv") + ":opening", "train") == [
        t for i, t in enumerate(lines) if i % 5 != 4
    ]


@pytest.mark.parametrize(
    ("setup", "spec", "message"),
    [
        (None, "missing.txt", "not found"),
        ("empty.txt", "empty.txt", "holds no prompts"),
        ("q.jsonl", "q.jsonl", "no column"),
        (None, "hf:justone", "hf:DATASET:COLUMN"),
    ],
)
def test_bad_prompt_specs(tmp_path, setup, spec, message):
    if setup == "empty.txt":
        (tmp_path / setup).write_text("\n\n")
    if setup == "q.jsonl":
        (tmp_path / setup).write_text(json.dumps({"body": "x"}) + "\n")
    spec = spec if spec.startswith("hf:") else str(tmp_path / spec)
    with pytest.raises(ConfigError, match=message):
        prompts.load_prompts(spec, "all")


def test_offline_hf_dataset_suggests_local_prompts():
    with pytest.raises(ConfigError, match="--prompts builtin"):
        prompts.load_prompts("hf:someone/not-a-dataset:text", "all")


def test_too_few_prompts_for_an_eval_split(tmp_path):
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match="eval split"):
        prompts.load_prompts(str(tmp_path / "few.txt"), "eval")


def test_chat_template_wraps_prompts():
    from bon_vs_rl.measurement.models import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    wrapped = prompts.apply_chat_template(tokenizer, ["Write a review of the cafe:"], enabled=True)
    assert "Write a review of the cafe:" in wrapped[0] and wrapped[0] != "Write a review of the cafe:"
    assert prompts.apply_chat_template(tokenizer, ["x"], enabled=False) == ["x"]
