"""Batch sizes for evaluation from free device memory, and the per-sequence memory they rest on.

On CUDA the batch is as many sequences of ``max_length`` tokens as fit in a fraction of the
device's free memory (``torch.cuda.mem_get_info``), each costing its KV cache, one decoder
layer's live activations and its logits (see :func:`sequence_bytes`); on the CPU (and MPS)
it stays the fixed :data:`CPU_BATCH_SIZE`. The memory planner (:mod:`msa_core.plan`) uses the
same per-sequence bytes for its generation headroom.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import torch

log = logging.getLogger(__name__)

# The CPU's batch: what evaluation always used before batches were chosen from free memory
# (a CPU has no separate memory pool to size against, and 16 kept the demo's timings).
CPU_BATCH_SIZE = 16
# The largest batch chosen by default: beyond 64 sequences a GPU batch is already compute-bound.
DEFAULT_CEILING = 64
# The share of free memory a batch may use: the rest absorbs the allocator's fragmentation and
# the temporaries this estimate leaves out (attention scratch, the scorer's fp32 chunks).
FREE_FRACTION = 0.8


def _config_int(config: Any, *names: str) -> Optional[int]:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes of KV cache one token takes over all layers: 2 (K and V) × layers × KV heads × head dim ×
    ``dtype_bytes``. Models whose config lacks the fields count one hidden vector each for K and V."""
    text = getattr(config, "text_config", None) or config
    layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers") or 1
    hidden = _config_int(text, "hidden_size", "n_embd", "d_model") or 0
    heads = _config_int(text, "num_attention_heads", "n_head") or 1
    kv_heads = _config_int(text, "num_key_value_heads") or heads
    head_dim = _config_int(text, "head_dim") or (hidden // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def sequence_bytes(config: Any, max_length: int, dtype_bytes: int) -> int:
    """Device bytes one sequence of ``max_length`` tokens needs in a forward or generate call:
    its KV cache, one decoder layer's live activations (4 hidden-size vectors and 3
    intermediate-size vectors per token, the MLP's gate/up/product) and its logits (vocab per token)."""
    text = getattr(config, "text_config", None) or config
    hidden = _config_int(text, "hidden_size", "n_embd", "d_model") or 0
    inter = _config_int(text, "intermediate_size", "n_inner") or 4 * hidden
    vocab = _config_int(text, "vocab_size") or 0
    per_token = kv_bytes_per_token(config, dtype_bytes) + (4 * hidden + 3 * inter + vocab) * dtype_bytes
    return int(max_length) * per_token


def _free_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def choose_batch_size(
    model: Any,
    max_length: int,
    *,
    device: Union[str, torch.device, None] = None,
    ceiling: int = DEFAULT_CEILING,
    free_bytes: Optional[int] = None,
) -> int:
    """The evaluation batch for ``model`` at ``max_length`` tokens per sequence.

    CUDA: the largest power of two ≤ ``ceiling`` whose sequences (:func:`sequence_bytes`) fit in
    :data:`FREE_FRACTION` of the free memory (``free_bytes`` when given, else
    ``torch.cuda.mem_get_info``; at least 1). A power of two, so small changes in free memory do
    not change the batch (and with it the padding) from one run to the next. Other devices:
    :data:`CPU_BATCH_SIZE` (capped at ``ceiling``). ``device`` defaults to the model's first parameter's.
    """
    if ceiling < 1:
        raise ValueError(f"batch ceiling must be >= 1, got {ceiling}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if dev.type != "cuda":
        return min(CPU_BATCH_SIZE, ceiling)
    dtype_bytes = next(model.parameters()).element_size()
    per_seq = max(1, sequence_bytes(model.config, max_length, dtype_bytes))
    free = _free_bytes(dev) if free_bytes is None else int(free_bytes)
    fit = int(free * FREE_FRACTION) // per_seq
    batch = 1
    while batch * 2 <= min(fit, ceiling):
        batch *= 2
    log.info("batch %d on %s: %.1f GiB free, %.1f MiB per sequence of %d tokens",
             batch, dev, free / 2**30, per_seq / 2**20, max_length)
    return batch
