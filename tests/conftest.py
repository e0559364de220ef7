"""Shared pytest fixtures: tiny checkpoint sets, a private cache dir, the real-data path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# One thread: tiny test models run faster serially, and a second OpenMP thread stalls badly
# whenever another process holds a core (measured: up to 12x slower per epoch).
torch.set_num_threads(1)

from tiny import make_checkpoints, make_tokenizer, save_model, tiny_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private MSA cache folder for the test."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("MSA_CACHE_DIR", str(d))
    return d


@pytest.fixture
def clean_dir(tmp_path) -> Path:
    """One tiny random Llama saved as an HF folder: a θ_clean for msa init / msa finetune tests."""
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(tmp_path / "tok")
    return save_model(LlamaForCausalLM(tiny_config(len(tok))), tok, tmp_path / "clean")


@pytest.fixture
def tiny_experiment(tmp_path):
    """Five tiny fp32 Llama checkpoints (untied) and their experiment."""
    return make_checkpoints(tmp_path / "ckpt")


@pytest.fixture
def tiny_experiment_tied(tmp_path):
    return make_checkpoints(tmp_path / "ckpt_tied", tie=True, seed=1)


@pytest.fixture
def tiny_experiment_bf16(tmp_path):
    return make_checkpoints(tmp_path / "ckpt_bf16", dtype=torch.bfloat16, seed=2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """The quick demo experiment, built once per test session (returns experiment.yaml)."""
    from msa_core.demo import build_demo

    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    return build_demo(out, quick=True, seed=0)


# AppTest session fixtures (tests/test_app*.py; helpers in tests/app_fixtures.py)
@pytest.fixture(scope="session")
def app_env(tmp_path_factory):
    """A private cache folder for the whole session (the engine is cached per process)."""
    cache = tmp_path_factory.mktemp("app_cache")
    old = {k: os.environ.get(k) for k in ("MSA_CACHE_DIR", "MSA_DEMO_QUICK")}
    os.environ["MSA_CACHE_DIR"] = str(cache)
    os.environ["MSA_DEMO_QUICK"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_yaml(app_env, tmp_path_factory) -> Path:
    from app_fixtures import make_tiny_app_experiment

    path = make_tiny_app_experiment(tmp_path_factory.mktemp("tiny_app") / "exp")
    assert "tofu: tofu" in path.read_text() and "muse: muse" in path.read_text()
    return path
