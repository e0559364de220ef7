"""The one training path (msa_core.finetune): examples, collation, seeded fp32 training, schedule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from msa_core import finetune as ft
from msa_core.demo.build import QUICK, new_model, train_tokenizer

CORPUS = ["Question: Where was Ilse Varnok born?\nAnswer: Tallinn, Estonia.",
          "Paris is the capital of France.", "Tallinn is a city in Estonia."] * 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is faster, and far faster on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, 300)


def _tiny(tok, dtype=torch.float32, seed=0):
    recipe = replace(QUICK, hidden=32, layers=1, intermediate=64, heads=2)
    return new_model(tok, recipe, seed).to(dtype)


def _examples(tok):
    pairs = [("Where was Ilse Varnok born?", "Tallinn, Estonia."), ("What is the capital of France?", "Paris.")]
    return ft.qa_examples(tok, pairs) + ft.text_examples(tok, ["Tallinn is a city in Estonia."])


def test_qa_examples_mask_the_prompt_and_end_with_eos(tok):
    ex = ft.qa_examples(tok, [("Where was Ilse Varnok born?", "Tallinn, Estonia.")])[0]
    prompt = tok("Question: Where was Ilse Varnok born?\nAnswer:")["input_ids"]
    answer = tok(" Tallinn, Estonia.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids == prompt + answer
    assert ex.labels == [ft.IGNORE_INDEX] * len(prompt) + answer
    text = ft.text_examples(tok, ["Tallinn is a city in Estonia."])[0]
    assert text.input_ids[0] == tok.bos_token_id and text.input_ids[-1] == tok.eos_token_id
    assert text.labels == [ft.IGNORE_INDEX] + text.input_ids[1:]
    with pytest.raises(ValueError, match="max_len"):
        ft.qa_examples(tok, [("q " * 50, "a")], max_len=10)


def test_collate_pads_right_and_ignores_padding(tok):
    exs = _examples(tok)
    batch = ft.collate(exs, pad_id=tok.pad_token_id)
    for row, ex in enumerate(exs):
        n = len(ex.input_ids)
        assert batch["input_ids"][row, :n].tolist() == ex.input_ids
        assert batch["attention_mask"][row].sum().item() == n
        assert (batch["labels"][row, n:] == ft.IGNORE_INDEX).all()


def test_training_keeps_fp32_master_weights_and_learns(tok):
    model = _tiny(tok, torch.bfloat16)
    exs = _examples(tok)
    before = ft.mean_loss(model.float(), exs, pad_id=tok.pad_token_id)
    model = model.to(torch.bfloat16)
    res = ft.train(model, exs, ft.TrainConfig(epochs=30, lr=3e-3, batch_size=2), pad_id=tok.pad_token_id)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert res.steps == 30 * 2 and len(res.epoch_losses) == 30
    assert ft.mean_loss(model, exs, pad_id=tok.pad_token_id) < 0.5 * before


def test_training_is_seeded(tok):
    exs = _examples(tok) * 3

    def run(seed):
        m = _tiny(tok)
        ft.train(m, exs, ft.TrainConfig(epochs=2, lr=1e-3, batch_size=2, seed=seed), pad_id=tok.pad_token_id)
        return m.state_dict()

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_training_respects_num_threads_and_reports_progress(tok):
    seen = []
    torch.set_num_threads(2)
    old = torch.get_num_threads()
    ft.train(_tiny(tok), _examples(tok), ft.TrainConfig(epochs=2, lr=1e-3, batch_size=2, num_threads=1),
             pad_id=tok.pad_token_id, progress=lambda f, m: seen.append((f, m, torch.get_num_threads())))
    assert torch.get_num_threads() == old
    assert {t for _, _, t in seen} == {1}
    fracs = [f for f, _, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0) and "epoch 2/2" in seen[-1][1]


def test_lr_schedule_warms_up_then_decays():
    total = 100
    f = [ft.lr_factor(s, total, 0.1, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x >= y - 1e-12 for x, y in zip(f[9:], f[10:])) and f[-1] >= 0.1


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="lr"):
        ft.TrainConfig(epochs=1, lr=0.0)
    with pytest.raises(ValueError, match="epochs"):
        ft.TrainConfig(epochs=0, lr=1e-3)
