"""msa_core.eval.settings: what keys a stored result — validation of the arguments, and a key
that hashes the same dict as the settings stored before the dataclass."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_experiment,
    make_model,
    make_tokenizer,
    write_muse,
    write_tofu,
)

from msa_core.eval import evaluate_model
from msa_core.eval.settings import eval_settings


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsettings")
    exp = make_experiment(root, tofu=write_tofu(root / "tofu"), muse=write_muse(root / "muse"))
    return exp, make_tokenizer(), None


def test_settings_validation(eval_setup, tmp_path):
    exp, tok, _ = eval_setup
    with pytest.raises(ValueError, match="tier"):
        eval_settings(exp, tok, tier="medium")
    with pytest.raises(ValueError, match="subset"):
        eval_settings(exp, tok, subset=0)
    bare = make_experiment(tmp_path)
    with pytest.raises(ValueError, match="data.tofu"):
        eval_settings(bare, tok, benchmark="tofu")
    with pytest.raises(ValueError, match="neither"):
        eval_settings(bare, tok, benchmark="all")
    a = eval_settings(exp, tok, subset=2).key
    assert a == eval_settings(exp, tok, subset=2).key != eval_settings(exp, tok, subset=3).key


def test_settings_dict_and_key_are_those_stored_before_the_dataclass(eval_setup):
    """Stored results keep matching: the key hashes the same dict as the settings dict of old."""
    import hashlib

    exp, tok, _ = eval_setup
    s = eval_settings(exp, tok, benchmark="tofu", subset=2, max_length=128)
    d = s.as_dict()
    assert set(d) == {"version", "benchmark", "benchmarks", "subset", "template", "vocab_size", "max_length",
                      "tofu", "reference", "conventions", "key"}
    assert d["reference"] == {"tr": None, "auc": None, "tofu_auc": "default:0.5"}
    assert d["benchmarks"] == ["tofu"] and d["key"] == s.key
    assert d["template"] == "plain" and d["conventions"] == {
        "extraction_strength": "open-unlearning", "min_k": "open-unlearning", "knowmem_prompt": "open-unlearning"}
    keyed = {k: v for k, v in d.items() if k != "key"}
    assert s.key == hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with pytest.raises(AttributeError):
        s.subset = 3  # frozen
    res = evaluate_model(make_model(len(tok), seed=1), tok, exp, benchmark="tofu", subset=2, settings=s)
    assert res.settings_key == s.key and {k: v for k, v in res.settings.items() if k not in ("counts", "missing")} == d
