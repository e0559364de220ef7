"""Batch sizes from free memory (msa_core.batching): hand-computed per-sequence bytes, fake free memory."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from msa_core import batching
from msa_core.batching import CPU_BATCH_SIZE, FREE_FRACTION, choose_batch_size, kv_bytes_per_token, sequence_bytes

MiB = 2**20


@pytest.fixture(scope="module")
def model():
    """A tiny bf16 Llama: hidden 64, 3 layers, MLP 160, 4 heads / 2 KV heads (head dim 16), vocab 500."""
    cfg = LlamaConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3, intermediate_size=160,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def test_sequence_bytes_are_kv_cache_activations_and_logits(model):
    kv = 2 * 3 * 2 * 16 * 2  # K and V × layers × KV heads × head dim × bf16
    assert kv_bytes_per_token(model.config, 2) == kv
    assert sequence_bytes(model.config, 100, 2) == 100 * (kv + (4 * 64 + 3 * 160 + 500) * 2)


def test_cuda_batch_is_the_largest_power_of_two_that_fits_the_free_memory(model):
    per_seq = sequence_bytes(model.config, 256, 2)
    for fit, want in ((1, 1), (5, 4), (16, 16), (17, 16), (1000, 64)):
        free = int(per_seq * fit / FREE_FRACTION) + 1
        assert choose_batch_size(model, 256, device="cuda:0", free_bytes=free) == want
    assert choose_batch_size(model, 256, device="cuda:0", free_bytes=0) == 1  # never below one
    assert choose_batch_size(model, 256, device="cuda:0", free_bytes=10**12, ceiling=8) == 8


def test_cuda_batch_reads_free_memory_from_mem_get_info(model, monkeypatch):
    per_seq = sequence_bytes(model.config, 128, 2)
    seen = []

    def fake(device):
        seen.append(device)
        return int(per_seq * 9 / FREE_FRACTION), 80 * 2**30

    monkeypatch.setattr(batching.torch.cuda, "mem_get_info", fake)
    assert choose_batch_size(model, 128, device="cuda:1") == 8
    assert seen == [torch.device("cuda:1")]


def test_cpu_keeps_the_fixed_batch(model):
    assert choose_batch_size(model, 256) == CPU_BATCH_SIZE == 16  # the model's own device: the CPU
    assert choose_batch_size(model, 256, device="cpu", ceiling=4) == 4
    with pytest.raises(ValueError, match="ceiling"):
        choose_batch_size(model, 256, ceiling=0)
