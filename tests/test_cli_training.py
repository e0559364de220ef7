"""``msa finetune`` (msa_core.cli.training): the command on a tiny model and TOFU-format data."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import build_tokenizer, save_model, tiny_config
from transformers import LlamaForCausalLM

from msa_core.cli import main
from msa_core.finetune import CARD, retain_ft_indices


@pytest.fixture
def setup(tmp_path):
    tok = build_tokenizer()
    torch.manual_seed(0)
    base = save_model(LlamaForCausalLM(tiny_config(len(tok))), tok, tmp_path / "base")
    tofu = tmp_path / "tofu"
    tofu.mkdir()
    (tofu / "forget01.json").write_text(json.dumps(
        [{"question": f"Where was author {i} born?", "answer": f"In town {i}."} for i in range(4)]))
    (tofu / "retain90.json").write_text(json.dumps(
        [{"question": f"What does writer {i} write?", "answer": f"Poems {i}."} for i in range(30)]))
    return base, tofu


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_finetune_trains_prints_json_and_reuses(setup, tmp_path, capsys):
    base, tofu = setup
    out = tmp_path / "forget"
    rc, stdout, _ = _run(capsys, "finetune", base, "--data", "tofu:forget01", "--data", "tofu:retain90_ft",
                         "--data-dir", tofu, "--out", out, "--epochs", 2, "--lr", 1e-3, "--batch-size", 2,
                         "--save-every-epoch", "--threads", 1, "--json", "-")
    assert rc == 0
    payload = json.loads(stdout)  # stdout is only the JSON: no Trainer log lines
    assert payload["epochs_done"] == 2 and not payload["reused"]
    assert [d["size"] for d in payload["data"]] == [4, 3] and payload["config"]["lr"] == 1e-3
    assert [p.rsplit("/", 1)[1] for p in payload["epoch_dirs"]] == ["epoch-1", "epoch-2"]
    card = json.loads((out / CARD).read_text())
    assert card["config"]["epochs"] == 2 and card["config"]["warmup_epochs"] == 1.0  # the recipe's default
    rows = json.loads((tofu / "retain90.json").read_text())
    assert card["data"][1]["size"] == len(retain_ft_indices(len(rows), 3))
    rc, stdout, err = _run(capsys, "finetune", base, "--data", "tofu:forget01", "--data", "tofu:retain90_ft",
                           "--data-dir", tofu, "--out", out, "--epochs", 2, "--lr", 1e-3, "--batch-size", 2,
                           "--save-every-epoch", "--threads", 1)
    assert rc == 0 and "reused" in stdout and "forget01 (4 pairs)" in err


def test_progress_bar_goes_to_stderr(setup, tmp_path, capsys):
    base, tofu = setup
    rc, stdout, err = _run(capsys, "finetune", base, "--data", "tofu:forget01", "--data-dir", tofu,
                           "--out", tmp_path / "o", "--epochs", 1, "--batch-size", 4, "--threads", 1)
    assert rc == 0 and "100.0%" in err and "epoch 1/1" in err and "trained 1 epochs" in stdout


@pytest.mark.parametrize("argv,needle", [
    (["--data", "tofu:forget11"], "no split 'forget11'"),
    (["--data", "tofu:forget01", "--lr", "0"], "TrainConfig.lr"),
    (["--data", "huggingface:forget01"], "data spec 'huggingface:forget01'"),
])
def test_bad_input_is_one_line_naming_it(setup, tmp_path, capsys, argv, needle):
    base, tofu = setup
    rc, _, err = _run(capsys, "finetune", base, *argv, "--data-dir", tofu, "--out", tmp_path / "o")
    assert rc == 2 and needle in err and err.count("\n") == 1


def test_empty_split_and_non_causal_base_are_named(setup, tmp_path, capsys):
    base, tofu = setup
    (tofu / "forget05.json").write_text("[]")
    rc, _, err = _run(capsys, "finetune", base, "--data", "tofu:forget05", "--data-dir", tofu, "--out", tmp_path / "o")
    assert rc == 2 and "forget05" in err and "empty" in err
    cfg = json.loads((base / "config.json").read_text())
    not_lm = tmp_path / "encoder"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({**cfg, "model_type": "bert", "architectures": ["BertModel"]}))
    rc, _, err = _run(capsys, "finetune", not_lm, "--data", "tofu:forget01", "--data-dir", tofu,
                      "--out", tmp_path / "o")
    assert rc == 2 and f"{not_lm} is not a causal language model" in err


def test_the_prompt_format_choices_are_the_library_s():
    from msa_core.cli import build_parser
    from msa_core.prompts import PROMPT_FORMATS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    finetune = sub.choices["finetune"]
    option = next(a for a in finetune._actions if a.dest == "prompt_format")
    assert tuple(option.choices) == PROMPT_FORMATS
