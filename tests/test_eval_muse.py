"""msa_core.eval.muse: the KnowMem prompt trimming conventions, computed again on tiny inputs, and
the prompts MUSE evaluation hands to generation under each convention."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_experiment,
    make_model,
    make_tokenizer,
    write_muse,
)

import msa_core.eval.muse as muse_mod
from msa_core.eval import metrics as M
from msa_core.eval.data import load_muse


def _long_prompt(n_shots: int) -> str:
    shots = [(f"Where was author number {i} born?", f"In the town of Velmora {i}.") for i in range(n_shots)]
    return M.few_shot_prompt(shots, "Where was Ana Lenz born?")


def test_open_unlearning_keeps_the_first_512_tokens_and_fit_context_the_last_that_fit():
    tok = make_tokenizer()
    prompt = _long_prompt(60)
    ids = list(tok(prompt)["input_ids"])  # BOS + text, as open-unlearning's tokenizer call with max_length
    assert len(ids) > 600
    head = muse_mod.knowmem_prompt(tok, prompt, "open-unlearning", max_length=512)
    assert head == tok.decode(ids[:512], skip_special_tokens=True)
    assert not head.endswith("Where was Ana Lenz born?\nAnswer:")  # right-side truncation drops the question
    tail = muse_mod.knowmem_prompt(tok, prompt, "fit-context", max_length=256)
    assert tail == tok.decode(ids[-(256 - muse_mod.KNOWMEM_MAX_NEW_TOKENS):], skip_special_tokens=True)
    assert tail.endswith("Where was Ana Lenz born?\nAnswer:")
    short = _long_prompt(2)
    assert muse_mod.knowmem_prompt(tok, short, "open-unlearning", 512) == short
    assert muse_mod.knowmem_prompt(tok, short, "fit-context", 512) == short
    with pytest.raises(ValueError, match="knowmem_prompt"):
        muse_mod.knowmem_prompt(tok, short, "none", 512)


def test_knowmem_generation_gets_the_trimmed_prompts_and_the_result_records_the_convention(tmp_path, monkeypatch):
    import msa_core.generation as gen
    from msa_core.eval.run import evaluate_model

    tok = make_tokenizer()
    exp = make_experiment(tmp_path, muse=write_muse(tmp_path / "muse"))
    seen: list[list[str]] = []

    def fake_text(model, tok, prompts, *, max_new_tokens, batch_size=16, stop=None, **kw):
        if max_new_tokens == muse_mod.KNOWMEM_MAX_NEW_TOKENS:
            seen.append(list(prompts))
        return ["Velmora"] * len(prompts)

    monkeypatch.setattr(gen, "generate_text", fake_text)
    monkeypatch.setattr(muse_mod, "OPEN_UNLEARNING_KNOWMEM_MAX_TOKENS", 12)  # the tiny prompts are ~60 tokens
    model = make_model(len(tok), seed=4)
    res = evaluate_model(model, tok, exp, tier="full", benchmark="muse")
    data = load_muse(exp.data.muse)
    full = M.few_shot_prompt(data.knowmem_forget_icl, data.knowmem_forget[0][0])
    ids = list(tok(full)["input_ids"])
    assert seen[0][0] == tok.decode(ids[:12], skip_special_tokens=True)
    assert res.settings["conventions"]["knowmem_prompt"] == "open-unlearning"
    seen.clear()
    fit = evaluate_model(model, tok, replace(exp, conventions=(("knowmem_prompt", "fit-context"),)), tier="full",
                         benchmark="muse")
    assert seen[0][0] == full  # fits the tiny model's 256 positions: untouched
    assert fit.settings_key != res.settings_key
