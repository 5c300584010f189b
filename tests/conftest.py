"""Shared test set-up: offline, a shared cache of converted models, tiny models only."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("BONRL_CACHE", str(Path(tempfile.gettempdir()) / "bonrl-test-cache"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path, monkeypatch):
    """Every test writes its own results table unless it says otherwise."""
    monkeypatch.setenv("BONRL_RESULTS", str(tmp_path / "results.sqlite"))
    monkeypatch.chdir(tmp_path)
