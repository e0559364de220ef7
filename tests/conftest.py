"""Shared pytest fixtures: tiny checkpoint sets, a private cache dir, the real-data path."""

from __future__ import annotations

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
