"""Shared test set-up: offline, a shared cache of converted models, tiny models only."""

import os
import tempfile
from pathlib import Path

import pytest
import toy_gold

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for modules that train tiny models: on a shared 2-core machine a second thread
    contending with other processes made training 5-15x slower (1.7 s with one thread, 8-31 s with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_policy(tmp_path_factory) -> str:
    """The six-word toy policy of tests/toy_gold.py, whose outputs RL and RM training can move quickly."""
    from bon_vs_rl.measurement import models

    return str(toy_gold.build_toy_policy(tmp_path_factory.mktemp("toy") / "policy", models.smollm2_tokenizer_dir()))


@pytest.fixture
def loading_bars_on():
    """transformers' per-load 'Loading weights' bars and warnings switched on, as in a fresh `bonrl` process.
    Both are process-wide switches that an earlier test's command may have turned off, which would hide a
    command that forgets to turn them off under --quiet."""
    from transformers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.enable_progress_bar()
    logging.set_verbosity_warning()
    yield
    (logging.enable_progress_bar if bars else logging.disable_progress_bar)()
    logging.set_verbosity(verbosity)


@pytest.fixture
def loud_libraries():
    """The libraries' default noise back on (an earlier test in this process may have turned it off), and
    every warning recorded: a --quiet test then sees what a fresh `bonrl` process would print."""
    import warnings

    import transformers

    transformers.utils.logging.enable_progress_bar()
    transformers.logging.set_verbosity_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
