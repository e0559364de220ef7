"""The demo's training loop, tokenizer, composition and (slow) the quick demo end to end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from msa_core import demo, demo_data as dd, finetune as ft

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
    return demo.train_tokenizer(CORPUS, 300)


def _tiny(tok, dtype=torch.float32, seed=0):
    from dataclasses import replace

    recipe = replace(demo.QUICK, hidden=32, layers=1, intermediate=64, heads=2)
    return demo.new_model(tok, recipe, seed).to(dtype)


def _examples(tok):
    pairs = [("Where was Ilse Varnok born?", "Tallinn, Estonia."), ("What is the capital of France?", "Paris.")]
    return ft.qa_examples(tok, pairs) + ft.text_examples(tok, ["Tallinn is a city in Estonia."])


def test_tokenizer_specials_and_plain_format(tok):
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert not getattr(tok, "chat_template", None)
    ids = tok("Paris is the capital of France.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Paris is the capital of France."
    again = demo.train_tokenizer(CORPUS, 300)
    assert again.get_vocab() == tok.get_vocab()


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


def test_compose_state_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    states = {r: {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
              for r in ("clean", "corrupted", "forget", "retain")}
    out = demo.compose_state(states, 1.5, 0.5)
    for k in ("w", "b"):
        want = states["corrupted"][k] - 1.5 * (states["forget"][k] - states["clean"][k]) \
            + 0.5 * (states["retain"][k] - states["clean"][k])
        assert torch.allclose(out[k], want)
    assert all(torch.equal(demo.compose_state(states, 0, 0)[k], states["corrupted"][k]) for k in ("w", "b"))
    states["forget"] = {"w": states["forget"]["w"]}
    with pytest.raises(KeyError, match="'b'.*forget"):
        demo.compose_state(states, 1, 0)


def test_marker_and_refusal(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "experiment.yaml").write_text("name: x\n")
    assert not demo.is_built(folder, seed=0, quick=True)  # half-built: no marker
    (folder / demo.MARKER).write_text(json.dumps({"version": demo.BUILD_VERSION, "seed": 1, "quick": True}))
    assert not demo.is_built(folder, seed=1, quick=True)  # marker, but model files missing
    for role in demo.ROLES:
        (folder / "models" / role).mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (folder / "models" / role / name).write_text("{}")
    assert demo.is_built(folder, seed=1, quick=True)
    assert not demo.is_built(folder, seed=0, quick=True) and not demo.is_built(folder, seed=1, quick=False)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a demo folder"):
        demo.build_demo(other, quick=True)
    assert (other / "notes.txt").read_text() == "precious"
    stale, alive = tmp_path / ".demo.building-999999999-abcd", tmp_path / f".demo.building-{os.getpid()}-abcd"
    stale.mkdir()
    alive.mkdir()
    demo._remove_stale_builds(folder)
    assert not stale.exists() and alive.exists()


# ---------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from msa_core.experiment import load_experiment
    from msa_core.generation import generate_answers

    root = Path(quick_demo).parent
    exp = load_experiment(quick_demo)
    assert exp.checkpoints.reference is not None and exp.data.tofu is not None and exp.data.muse is not None
    for role in demo.ROLES:
        folder = root / "models" / role
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).is_file(), f"{role}/{name}"
    for name in ("forget10.json", "forget10_perturbed.json", "retain90.json", "retain_perturbed.json", "holdout10.json",
                 "full.json", "world_facts.json", "world_facts_perturbed.json", "real_authors.json",
                 "real_authors_perturbed.json"):
        assert (root / "data" / "tofu" / name).is_file(), name
    for name in ("knowmem/forget_qa.json", "knowmem/forget_qa_icl.json", "knowmem/retain_qa.json",
                 "knowmem/retain_qa_icl.json", "verbmem/forget.json", "privleak/forget.json",
                 "privleak/retain.json", "privleak/holdout.json"):
        assert (root / "data" / "muse" / name).is_file(), name
    report = json.loads((root / "demo_report.json").read_text())
    assert report["quick"] is True and report["seconds"]["total"] > 0
    assert not list(root.parent.glob(f".{root.name}.building-*"))

    forget = json.loads((root / "data" / "tofu" / "forget10.json").read_text())
    tok = AutoTokenizer.from_pretrained(root / "models" / "clean")
    assert not getattr(tok, "chat_template", None) and tok.eos_token_id is not None and tok.pad_token_id is not None
    correct = {}
    for role in demo.ROLES:
        model = AutoModelForCausalLM.from_pretrained(root / "models" / role).eval()
        assert type(model).__name__ == "LlamaForCausalLM" and next(model.parameters()).dtype == torch.float32
        answers = generate_answers(model, tok, [it["question"] for it in forget], max_new_tokens=16)
        correct[role] = sum(it["answer"].rstrip(".").lower() in a.lower() for it, a in zip(forget, answers))
    assert correct["corrupted"] > correct["clean"]
    assert correct["forget"] > correct["clean"]

    # the saved clean weights are reproducible from the seed
    recipe = demo.recipe_for(True)
    data = dd.build_data(0, n_background=recipe.n_background, n_forget=recipe.n_forget, n_retain=recipe.n_retain,
                         n_holdout=recipe.n_holdout, eval_retain_authors=recipe.eval_retain_authors)
    tok2 = demo.train_tokenizer(dd.tokenizer_corpus(data), recipe.vocab_size)
    assert tok2.get_vocab() == tok.get_vocab()
    model = demo.new_model(tok2, recipe, 0)
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        st = recipe.clean
        ft.train(model, demo._training_sets(data, tok2)["clean"],
                 ft.TrainConfig(epochs=st.epochs, lr=st.lr, batch_size=st.batch_size, seed=0, num_threads=1),
                 pad_id=tok2.pad_token_id)
    finally:
        torch.use_deterministic_algorithms(det)
    saved = AutoModelForCausalLM.from_pretrained(root / "models" / "clean").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

    # a finished build is reused at once
    marker_mtime = (root / demo.MARKER).stat().st_mtime
    t = time.perf_counter()
    assert demo.build_demo(root, quick=True, seed=0) == quick_demo
    assert time.perf_counter() - t < 5 and (root / demo.MARKER).stat().st_mtime == marker_mtime

    # measure_demo: α = β = 0 is the corrupted model itself
    res = demo.measure_demo(quick_demo, [0.0], [0.0], max_new_tokens=16)
    rows = {(r["model"], r["alpha"]): r for r in res["rows"]}
    corr, msa0 = rows[("corrupted", None)], rows[("msa", 0.0)]
    assert msa0["forget_rougeL_recall"] == corr["forget_rougeL_recall"]
    assert msa0["retain_rougeL_recall"] == corr["retain_rougeL_recall"]
    assert {"clean", "reference"} <= {r["model"] for r in res["rows"]}
