"""The demo build (msa_core.demo.build): tokenizer, build marker, stale builds, and (slow) the quick demo end to end."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from msa_core.atomic import ASIDE_TAG, OWNER_FILE, TEMP_SUFFIX, temp_prefix
from msa_core.demo import build as demo
from msa_core.demo import data as dd
from msa_core.finetune import finetune

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
    assert demo.is_demo_folder(folder)


def _stub_build(root: Path, recipe, *, seed: int, quick: bool, progress) -> None:
    """What a finished build leaves (files and, last, the marker), without the training."""
    (root / "data" / "tofu").mkdir(parents=True)
    (root / "experiment.yaml").write_text(f"name: stub-{seed}\n")
    for role in demo.ROLES:
        (root / "models" / role).mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (root / "models" / role / name).write_text("{}")
    (root / demo.MARKER).write_text(json.dumps({**demo._marker_payload(seed, quick), "built_at": "now"}))


def _user_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    thesis = tmp_path / "thesis"
    files = {"data/survey.csv": "id,answer\n1,yes\n", "models/notes.txt": "mine", "experiment.yaml": "name: mine\n"}
    for rel, text in files.items():
        (thesis / rel).parent.mkdir(parents=True, exist_ok=True)
        (thesis / rel).write_text(text)
    return thesis, files


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_not_made_by_the_demo_is_never_replaced(tmp_path, monkeypatch, force):
    monkeypatch.setattr(demo, "_build_into", _stub_build)
    thesis, files = _user_folder(tmp_path)
    with pytest.raises(ValueError, match=f"{thesis} exists and was not created by `msa demo` "
                                         f"\\(no {demo.MARKER} marker of a finished build\\); "
                                         "refusing to replace it, even with --force"):
        demo.build_demo(thesis, quick=True, force=force)
    assert {str(p.relative_to(thesis)): p.read_text() for p in thesis.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temp folder either


def test_a_marked_demo_build_is_replaced_and_an_empty_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_build_into", _stub_build)
    folder = tmp_path / "demo"
    folder.mkdir()  # empty: nothing to lose
    assert demo.build_demo(folder, quick=True, seed=1) == folder / "experiment.yaml"
    assert demo.is_built(folder, seed=1, quick=True)
    demo.build_demo(folder, quick=True, seed=2)  # another seed: the marked build is replaced
    assert (folder / "experiment.yaml").read_text() == "name: stub-2\n"
    demo.build_demo(folder, quick=True, seed=2, force=True)
    assert demo.is_built(folder, seed=2, quick=True) and not (folder / OWNER_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_a_folder_that_appears_during_the_build_is_not_replaced(tmp_path, monkeypatch):
    thesis, files = _user_folder(tmp_path)
    target = tmp_path / "late"

    def build_then_user_writes(root: Path, *args, **kwargs) -> None:
        _stub_build(root, *args, **kwargs)
        thesis.rename(target)  # the user's folder lands at the path while the build runs

    monkeypatch.setattr(demo, "_build_into", build_then_user_writes)
    with pytest.raises(ValueError, match=f"{target} appeared during the build and was not created by `msa demo`"):
        demo.build_demo(target, quick=True)
    assert {str(p.relative_to(target)): p.read_text() for p in target.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late"]


def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="the demo folder is empty"):
        demo.build_demo("", quick=True)
    assert list(tmp_path.iterdir()) == []


def test_stale_build_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_build_into", _stub_build)
    folder = tmp_path / "demo"
    prefix, me = temp_prefix(folder), socket.gethostname()
    stale, alive, foreign = (tmp_path / f"{prefix}{tag}{TEMP_SUFFIX}" for tag in ("stale", "alive", "foreign"))
    for tmp, pid in ((stale, 999_999_999), (alive, os.getpid()), (foreign, None)):
        tmp.mkdir()
        if pid is not None:
            (tmp / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": None, "host": me}))
    demo.build_demo(folder, quick=True)
    assert not stale.exists() and alive.exists()
    assert foreign.exists()  # a temp folder without an owner file is not a build's: left alone


def test_a_build_killed_mid_replacement_is_restored_by_the_next_build(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(demo, "_build_into", _stub_build)
    folder = tmp_path / "demo"
    demo.build_demo(folder, quick=True, seed=1)
    aside = tmp_path / f"{temp_prefix(folder)}{ASIDE_TAG}dead{TEMP_SUFFIX}"
    os.replace(folder, aside)  # killed after moving the old build aside
    with caplog.at_level("WARNING"):
        demo.build_demo(folder, quick=True, seed=1)
    assert "restored the previous copy from an interrupted replacement" in caplog.text
    assert demo.is_built(folder, seed=1, quick=True) and not aside.exists()


def test_the_default_fine_tunes_keep_a_few_epoch_folders(tmp_path):
    assert demo.kept_epochs(demo.FULL) == [3, 6, 9] and demo.kept_epochs(demo.QUICK) == [3, 6, 9]
    assert demo.kept_epochs(replace(demo.QUICK, vectors=demo.Stage(2, 1e-3, 8))) == [1]
    folder = tmp_path / "forget"
    for k in range(1, 6):
        (folder / f"epoch-{k}").mkdir(parents=True)
        (folder / f"epoch-{k}" / "model.safetensors").write_text("w")
    (folder / "msa_finetune.json").write_text(json.dumps({"key": {"k": 1}, "epoch_dirs": [f"epoch-{k}" for k in
                                                                                           range(1, 6)]}))
    assert demo._prune_epochs(folder, [2, 4]) == ["epoch-2", "epoch-4"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-2", "epoch-4", "msa_finetune.json"]
    assert json.loads((folder / "msa_finetune.json").read_text()) == {"key": {"k": 1}, "epoch_dirs": ["epoch-2",
                                                                                                    "epoch-4"]}
    # msa init with init_args keeps every epoch of the forget/retain fine-tunes, as the demo saves them
    assert "--save-every-epoch" in demo.init_args(demo.QUICK, muse_dir=tmp_path)


# ---------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo, tmp_path):
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
    assert not (root / OWNER_FILE).exists()
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

    # the saved clean weights are reproducible from the seed, through the one training path
    recipe = demo.recipe_for(True)
    data = dd.build_data(0, n_background=recipe.n_background, n_forget=recipe.n_forget, n_retain=recipe.n_retain,
                         n_holdout=recipe.n_holdout, eval_retain_authors=recipe.eval_retain_authors)
    tok2 = demo.train_tokenizer(dd.tokenizer_corpus(data), recipe.vocab_size)
    assert tok2.get_vocab() == tok.get_vocab()
    init = demo.save_initial_model(tok2, recipe, 0, tmp_path / "init")
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        again = finetune(init, demo.clean_training_data(data), tmp_path / "clean",
                         demo.train_config(recipe.clean, 0), reuse=False)
    finally:
        torch.use_deterministic_algorithms(det)
    saved = AutoModelForCausalLM.from_pretrained(root / "models" / "clean").state_dict()
    model = AutoModelForCausalLM.from_pretrained(again.out).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.items())

    # every model folder carries its msa finetune card; the fine-tunes used the TOFU splits msa init uses
    cards = {role: json.loads((root / "models" / role / "msa_finetune.json").read_text()) for role in demo.ROLES}
    assert "tofu:forget10" in json.dumps(cards["forget"]) and "tofu:retain90_ft" in json.dumps(cards["retain"])
    assert "tofu:full" in json.dumps(cards["corrupted"]) and "tofu:retain90" in json.dumps(cards["reference"])

    # a finished build is reused at once
    marker_mtime = (root / demo.MARKER).stat().st_mtime
    t = time.perf_counter()
    assert demo.build_demo(root, quick=True, seed=0) == quick_demo
    assert time.perf_counter() - t < 5 and (root / demo.MARKER).stat().st_mtime == marker_mtime
