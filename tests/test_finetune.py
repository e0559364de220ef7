"""The one training path (msa_core.finetune): Trainer fine-tunes on tiny Llamas, fp32 master
weights, per-epoch folders, the card, reuse by fingerprint, resume after a kill, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tokenizer, save_model, tiny_config
from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaForCausalLM

from msa_core import finetune as ft
from msa_core.finetune.examples import IGNORE_INDEX, Collator, build_examples
from msa_core.finetune.train import work_dir

PAIRS = [("Where was Ana Lenz born?", "Ana Lenz was born in Velmora."),
         ("What genre does Bo Kress write?", "Bo Kress writes mystery novels."),
         ("What is the capital of France?", "Paris is the capital of France.")]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture
def base(tmp_path, tok):
    torch.manual_seed(0)
    return save_model(LlamaForCausalLM(tiny_config(len(tok))), tok, tmp_path / "base")


def _data():
    return [ft.qa_data("demo:forget", PAIRS * 2), ft.text_data("demo:text", ["Authors write books. Books win awards."])]


def _cfg(**kw):
    values = dict(epochs=3, lr=3e-3, batch_size=2, warmup_epochs=0.0, num_threads=1)
    values.update(kw)
    return ft.TrainConfig(**values)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _loss(folder, examples, pad_id):
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    batch = Collator(pad_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    with torch.no_grad():
        return float(model(**batch).loss)


def test_defaults_are_the_reference_recipe():
    c = ft.TrainConfig()
    assert (c.epochs, c.lr, c.weight_decay, c.warmup_epochs, c.scheduler, c.seed) == (10, 1e-5, 0.01, 1.0, "linear", 42)
    assert (c.batch_size, c.max_length, c.objective, c.precision) == (4, 512, "sft", "auto")
    for bad in (dict(lr=0.0), dict(epochs=0), dict(precision="fp16"), dict(objective="npo"), dict(scheduler="x")):
        with pytest.raises(ValueError, match="TrainConfig"):
            ft.TrainConfig(**bad)


def test_examples_mask_the_prompt_and_end_with_eos(tok):
    ex = build_examples(tok, [ft.qa_data("d", PAIRS[:1])], 128)[0]
    prompt = tok("Question: Where was Ana Lenz born?\nAnswer:")["input_ids"]
    answer = tok(" Ana Lenz was born in Velmora.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids == prompt + answer and ex.labels == [IGNORE_INDEX] * len(prompt) + answer
    text = build_examples(tok, [ft.text_data("t", ["Authors write books."])], 128)[0]
    assert text.input_ids[0] == tok.bos_token_id and text.input_ids[-1] == tok.eos_token_id
    windows = build_examples(tok, [ft.text_data("t", ["Authors write books. " * 20])], 16)
    assert all(len(w.input_ids) <= 16 for w in windows) and len(windows) > 2
    with pytest.raises(ValueError, match="max_length=8"):
        build_examples(tok, [ft.qa_data("d", PAIRS[:1])], 8)


def test_finetune_learns_writes_a_complete_folder_and_a_card_with_every_value(base, tmp_path, tok):
    out = tmp_path / "forget"
    seen = []
    cfg = _cfg(epochs=10, lr=1e-2, warmup_epochs=1.0)
    threads = []
    torch.set_num_threads(2)
    try:
        res = ft.finetune(base, _data(), out, cfg,
                          progress=lambda f, m: (seen.append((f, m)), threads.append(torch.get_num_threads())))
        assert set(threads[:-1]) == {1} and threads[-1] == torch.get_num_threads() == 2  # 1 while training
    finally:
        torch.set_num_threads(1)
    assert res.out == out and res.epochs_done == 10 and not res.reused and not res.resumed
    examples = build_examples(tok, _data(), 512)
    assert _loss(out, examples, tok.pad_token_id) < 0.5 * _loss(base, examples, tok.pad_token_id)
    assert not work_dir(out).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".forget")]
    card = json.loads((out / ft.CARD).read_text())
    assert card["config"] == {**ft.TrainConfig().__dict__, **cfg.__dict__}
    assert [d["name"] for d in card["data"]] == ["demo:forget", "demo:text"] and card["data"][0]["size"] == 6
    assert card["base"] == str(base.resolve()) and len(card["key"]["base_fingerprint"]) > 8
    assert set(card["versions"]) == {"torch", "transformers", "accelerate", "datasets"}
    # 6 QA pairs + 1 text = 7 examples, batch 2 → 4 steps per epoch, 40 in all, warm-up 1 epoch.
    assert (card["steps_per_epoch"], card["total_steps"], card["warmup_steps"], card["examples"]) == (4, 40, 4, 7)
    assert card["final_loss"] == pytest.approx(res.final_loss) and len(card["epoch_losses"]) == 10
    assert card["saved_dtype"] == "float32" and card["autocast"] == "none"
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and any("epoch 10/10" in m for _, m in seen)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.vocab_size == len(tok) and (out / "tokenizer.json").is_file()


def test_per_epoch_checkpoints_are_complete_hf_folders(base, tmp_path):
    out = tmp_path / "retain"
    res = ft.finetune(base, _data(), out, _cfg(save_every_epoch=True))
    assert [p.name for p in res.epoch_dirs] == ["epoch-1", "epoch-2", "epoch-3"]
    previous = _weights(base)
    for folder in res.epoch_dirs:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        assert isinstance(model, LlamaForCausalLM) and (folder / "tokenizer.json").is_file()
        assert not list(folder.glob("optimizer*")) and not list(folder.glob("rng_state*"))
        w = _weights(folder)
        assert any(not torch.equal(w[k], previous[k]) for k in w)  # each epoch moved the weights
        previous = w
    final = _weights(out)
    assert all(torch.equal(final[k], previous[k]) for k in final)


def test_reuse_by_fingerprint_returns_the_folder_without_training(base, tmp_path):
    out = tmp_path / "full"
    first = ft.finetune(base, _data(), out, _cfg(epochs=1))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = ft.finetune(base, _data(), out, _cfg(epochs=1, num_threads=2, resumable=False))
    assert again.reused and again.final_loss == pytest.approx(first.final_loss)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    changed = ft.finetune(base, _data(), out, _cfg(epochs=1, lr=1e-3))  # another setting: trained again
    assert not changed.reused and (out / "model.safetensors").stat().st_mtime_ns != stamp
    assert json.loads((out / ft.CARD).read_text())["config"]["lr"] == 1e-3
    other_data = ft.finetune(base, [ft.qa_data("demo:forget", PAIRS)], out, _cfg(epochs=1, lr=1e-3))
    assert not other_data.reused


def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(base, tmp_path):
    cfg = _cfg(epochs=4, save_every_epoch=True)
    whole = ft.finetune(base, _data(), tmp_path / "whole", cfg)
    out = tmp_path / "killed"

    class Killed(Exception):
        pass

    def kill_after_epoch_2(fraction, message):
        if "epoch 3/4" in message:  # the first step of epoch 3: epoch 2's checkpoint is on disk
            raise Killed

    with pytest.raises(Killed):
        ft.finetune(base, _data(), out, cfg, progress=kill_after_epoch_2)
    assert not out.exists() and [p.name for p in work_dir(out).glob("checkpoint-*")] == ["checkpoint-8"]
    resumed = ft.finetune(base, _data(), out, cfg)
    assert resumed.resumed and not work_dir(out).exists()
    a, b = _weights(whole.out), _weights(out)
    # Exact: the checkpoint holds fp32 weights, optimizer, scheduler, RNG and the sampler's epoch,
    # and one thread on the CPU makes every kernel deterministic.
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / ft.CARD).read_text())["resumed_from"] == "checkpoint-8"
    assert [p.name for p in resumed.epoch_dirs] == ["epoch-1", "epoch-2", "epoch-3", "epoch-4"]
    for epoch in ("epoch-2", "epoch-3"):  # one kept before the kill, one made after the resume
        e1, e2 = _weights(whole.out / epoch), _weights(out / epoch)
        assert all(torch.equal(e1[k], e2[k]) for k in e1)
    plain_cfg = _cfg(epochs=4, resumable=False)
    # Without per-epoch checkpoints (a setting that only saves time) the weights are the same too.
    plain = ft.finetune(base, _data(), tmp_path / "plain", plain_cfg)
    c = _weights(plain.out)
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 = autocast, as on a GPU (here on the CPU)
def test_master_weights_stay_fp32_when_the_base_is_bf16(tmp_path, tok, precision):
    torch.manual_seed(1)
    base = save_model(LlamaForCausalLM(tiny_config(len(tok))), tok, tmp_path / "bf16", torch.bfloat16)
    start = _weights(base)
    assert all(v.dtype == torch.bfloat16 for v in start.values())
    # One AdamW step moves a weight by about lr = 1e-6: below half a bf16 ulp of any weight with
    # |w| > 2^-12 · 2 (bf16 keeps 8 significant bits), so pure-bf16 training would lose it.
    res = ft.finetune(base, [ft.qa_data("d", PAIRS[:2])], tmp_path / "out",
                      _cfg(epochs=1, lr=1e-6, batch_size=2, weight_decay=0.0, max_grad_norm=0.0,
                           precision=precision))
    assert json.loads((res.out / ft.CARD).read_text())["autocast"] == ("bf16" if precision == "bf16" else "none")
    end = _weights(res.out)
    moved = kept_in_bf16 = total = 0
    for k, w0 in start.items():
        w1 = end[k]
        assert w1.dtype == torch.float32
        big = w0.float().abs() > 2 ** -6  # ulp 2^-13 or more: the lr-sized step is < half an ulp
        moved += int((w1 != w0.float())[big].sum())
        kept_in_bf16 += int((w1.to(torch.bfloat16) == w0)[big].sum())
        total += int(big.sum())
    assert total > 1000
    assert moved > 0.5 * total  # the fp32 master weights took the update ...
    assert kept_in_bf16 == total  # ... which a bf16 round-trip (pure bf16 training) would round away


def test_a_base_that_is_not_a_causal_lm_is_named(tmp_path, tok):
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(ValueError, match=f"{bert} is not a causal language model"):
        ft.finetune(bert, _data(), tmp_path / "out", _cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has no config.json"):
        ft.finetune(tmp_path / "empty", _data(), tmp_path / "out", _cfg())
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        ft.finetune(tmp_path / "missing", _data(), tmp_path / "out", _cfg())


def test_an_output_folder_not_made_here_is_never_replaced(base, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        ft.finetune(base, _data(), mine, _cfg(epochs=1))
    assert (mine / "notes.txt").read_text() == "keep me" and not work_dir(mine).exists()


def test_out_of_memory_names_settings_that_would_fit(base, tmp_path, monkeypatch):
    from msa_core.finetune import train

    def oom(self, *a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train.MsaTrainer, "train", oom)
    with pytest.raises(ValueError, match="no training data"):
        ft.finetune(base, [], tmp_path / "out", _cfg())
    with pytest.raises(ft.FinetuneOutOfMemory) as err:
        ft.finetune(base, _data(), tmp_path / "out", _cfg(batch_size=8, max_length=256))
    msg = str(err.value)
    assert "batch_size=8" in msg and "--batch-size 4 --grad-accum 2" in msg and "--gradient-checkpointing" in msg
    assert "max-length" in msg
