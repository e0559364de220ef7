"""train_model (msa_core.finetune.in_memory): the same training as finetune(), on a model in memory."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tokenizer, save_model, tiny_config
from transformers import LlamaForCausalLM

from msa_core import finetune as ft
from msa_core.checkpoints import load_model

PAIRS = [("Where was Ana Lenz born?", "Ana Lenz was born in Velmora."),
         ("What genre does Bo Kress write?", "Bo Kress writes mystery novels."),
         ("What is the capital of France?", "Paris is the capital of France.")]


def test_training_in_memory_gives_the_weights_finetune_writes(tmp_path):
    tok = build_tokenizer()
    torch.manual_seed(0)
    base = save_model(LlamaForCausalLM(tiny_config(len(tok))), tok, tmp_path / "base")
    data = ft.qa_data("demo:forget", PAIRS * 2)
    config = ft.TrainConfig(epochs=2, lr=3e-3, batch_size=2, warmup_epochs=0.5, num_threads=1, resumable=False)
    on_disk = ft.finetune(base, data, tmp_path / "out", config)
    model = load_model(base, device="cpu", dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    done = ft.train_model(model, tok, data, config)
    assert done.steps == 2 * 3 and done.examples == 6 and len(done.epoch_losses) == 2
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    written = load_file(str(on_disk.out / "model.safetensors"))
    moved = 0
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, written[name], rtol=0, atol=1e-6, msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved > 0  # the run trained something


def test_a_bf16_model_is_trained_with_fp32_master_weights_and_bad_settings_are_refused():
    tok = build_tokenizer()
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_config(len(tok))).to(torch.bfloat16)
    data = ft.qa_data("demo:forget", PAIRS)
    ft.train_model(model, tok, data, ft.TrainConfig(epochs=1, lr=1e-3, batch_size=3, num_threads=1))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="save_every_epoch"):
        ft.train_model(model, tok, data, ft.TrainConfig(epochs=1, save_every_epoch=True))
    with pytest.raises(ValueError, match="no training data"):
        ft.train_model(model, tok, [], ft.TrainConfig(epochs=1))
