"""The 1B-shaped test subject of ``bench/recompose.py``: TinyLlama-1.1B's shape (hidden 2048,
MLP 5632, 32 heads, 4 KV heads, vocab 32000, untied), built on the meta device and filled
with constants (values do not change the arithmetic's speed).

The engine for it is constructed directly from in-memory tensors
(``Engine(exp, model, None, vectors)``); the naive path gets four such checkpoints on disk.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from _common import ROLES

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

    from msa_core.engine import Engine

ONE_B = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
ONE_B_LAYERS = 22
NAIVE_DIR = Path("/tmp/msa-bench-1b")


def one_b_config(layers: int) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, **ONE_B)


def one_b_params(layers: int) -> int:
    """Parameter count of the 1B-shaped model with ``layers`` layers."""
    h, i, v, kv = ONE_B["hidden_size"], ONE_B["intermediate_size"], ONE_B["vocab_size"], ONE_B["num_key_value_heads"]
    kv_dim = h // ONE_B["num_attention_heads"] * kv
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * i + 2 * h
    return 2 * v * h + h + layers * per_layer


def synthetic_model(layers: int, dtype: torch.dtype, device: str, fill: float = 0.01) -> LlamaForCausalLM:
    """A 1B-shaped Llama with constant-filled weights, allocated directly in ``dtype``."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(one_b_config(layers))
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.fill_(fill * (1 + k % 7))
    model.eval().requires_grad_(False)
    return model


def synthetic_engine(layers: int, dtype: torch.dtype, device: str) -> Engine:
    """An engine over :func:`synthetic_model` with constant τ_f, τ_r (no files behind it)."""
    from msa_core.engine import Engine
    from msa_core.experiment import Checkpoints, Experiment
    from msa_core.vectors import VectorSet

    model = synthetic_model(layers, dtype, device)
    named = dict(model.named_parameters())
    forget = {n: torch.full(p.shape, 1e-3, dtype=torch.float32, device=device) for n, p in named.items()}
    retain = {n: torch.full(p.shape, 2e-3, dtype=torch.float32, device=device) for n, p in named.items()}
    nowhere = Path("/nonexistent")
    vs = VectorSet(forget=forget, retain=retain, fingerprint="synthetic", path=nowhere, from_cache=False, seconds=0.0)
    exp = Experiment(
        name="synthetic-1b", checkpoints=Checkpoints(clean=nowhere, corrupted=nowhere, forget=nowhere, retain=nowhere)
    )
    return Engine(exp, model, None, vs)


def make_1b_checkpoints(layers: int, dtype: torch.dtype) -> Path:
    """Four 1B-shaped checkpoints (constant-filled) as HF folders under NAIVE_DIR."""
    root = NAIVE_DIR / f"{layers}l-{str(dtype).replace('torch.', '')}"
    if all((root / r / "config.json").is_file() for r in ROLES):
        return root
    n = one_b_params(layers)
    e = torch.empty((), dtype=dtype).element_size()
    free = shutil.disk_usage(NAIVE_DIR.parent).free
    if free < 4 * n * e * 1.1 + 2 * 1024**3:
        raise SystemExit(f"not enough disk under {NAIVE_DIR.parent} for four {n / 1e9:.2f}B checkpoints")
    for k, role in enumerate(ROLES):
        model = synthetic_model(layers, dtype, "cpu", fill=0.01 + 0.001 * k)
        model.save_pretrained(root / role, safe_serialization=True)
        del model
        gc.collect()
    return root
