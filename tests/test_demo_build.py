"""The demo build (msa_core.demo.build): tokenizer, build marker, stale builds, and (slow) the quick demo end to end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from msa_core import finetune as ft
from msa_core.atomic import TEMP_SUFFIX, temp_prefix
from msa_core.demo import build as demo
from msa_core.demo import data as dd

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


def test_tokenizer_specials_and_plain_format(tok):
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert not getattr(tok, "chat_template", None)
    ids = tok("Paris is the capital of France.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Paris is the capital of France."
    again = demo.train_tokenizer(CORPUS, 300)
    assert again.get_vocab() == tok.get_vocab()


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
    prefix = temp_prefix(folder)
    stale, alive, foreign = (tmp_path / f"{prefix}{tag}{TEMP_SUFFIX}" for tag in ("stale", "alive", "foreign"))
    for tmp, owner in ((stale, "999999999"), (alive, str(os.getpid())), (foreign, None)):
        tmp.mkdir()
        if owner is not None:
            (tmp / demo.OWNER_FILE).write_text(owner)
    demo._remove_stale_builds(folder)
    assert not stale.exists() and alive.exists()
    assert foreign.exists()  # a temp folder without an owner file is not a build's: left alone


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
    assert not list(root.parent.glob(f"{temp_prefix(root)}*"))  # no temp build folder left behind
    assert not (root / demo.OWNER_FILE).exists()
    # the report measured through the engine shows the demo's point: the corrupted model knows
    # the forget set, the suggested point forgets most of it and keeps most of the retain set
    scores = report["scores"]
    point = scores[f"msa(alpha={demo.SUGGESTED[0]:g},beta={demo.SUGGESTED[1]:g})"]
    corr = scores["corrupted"]
    assert set(scores) == {*demo.ROLES, f"msa(alpha={demo.SUGGESTED[0]:g},beta={demo.SUGGESTED[1]:g})"}
    assert corr["forget"]["rougeL_recall"] > 2 * scores["clean"]["forget"]["rougeL_recall"]
    assert point["forget"]["rougeL_recall"] <= 0.5 * corr["forget"]["rougeL_recall"]
    assert point["retain"]["rougeL_recall"] >= 0.6 * corr["retain"]["rougeL_recall"]
    assert corr["forget"]["n"] == len(json.loads((root / "data" / "tofu" / "forget10.json").read_text()))

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
