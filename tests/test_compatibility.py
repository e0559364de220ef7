"""Checkpoint compatibility: every mismatch between roles, or between a config and its weights,
names the role and the tensor or config key."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import rewrite_weights

from msa_core.compatibility import check_compatible


def test_compatible_set_passes(tiny_experiment):
    report = check_compatible(tiny_experiment)
    assert report.ok and report.num_parameters > 0 and report.architecture == "LlamaForCausalLM"


def test_missing_tensor_named(tiny_experiment):
    rewrite_weights(tiny_experiment.checkpoints.forget,
             lambda sd: {k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(ValueError, match=r"forget: tensor model\.layers\.1\.mlp\.up_proj\.weight missing"):
        check_compatible(tiny_experiment)


def test_extra_tensor_named(tiny_experiment):
    rewrite_weights(tiny_experiment.checkpoints.retain, lambda sd: {**sd, "model.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"retain: extra tensor model\.extra\.weight"):
        check_compatible(tiny_experiment)


def test_shape_mismatch_named(tiny_experiment):
    def widen(sd):
        sd = dict(sd)
        sd["model.norm.weight"] = torch.ones(33)
        return sd

    rewrite_weights(tiny_experiment.checkpoints.clean, widen)
    with pytest.raises(ValueError, match=r"clean: tensor model\.norm\.weight has shape \[33\]"):
        check_compatible(tiny_experiment)


def test_dtype_mismatch_named(tiny_experiment):
    # A floating tensor stored as integers in one checkpoint is a real mismatch (not a precision choice).
    rewrite_weights(tiny_experiment.checkpoints.forget,
             lambda sd: {k: v.to(torch.int32) if k == "model.norm.weight" else v for k, v in sd.items()})
    with pytest.raises(ValueError, match=r"forget: tensor model\.norm\.weight has dtype int32, corrupted has float32"):
        check_compatible(tiny_experiment)


def test_mixed_floating_dtypes_are_compatible(tiny_experiment):
    # clean bf16, forget fp16, retain with some bf16 tensors, corrupted fp32: accepted, each role's dtype reported.
    rewrite_weights(tiny_experiment.checkpoints.clean, lambda sd: {k: v.to(torch.bfloat16) for k, v in sd.items()})
    rewrite_weights(tiny_experiment.checkpoints.forget, lambda sd: {k: v.to(torch.float16) for k, v in sd.items()})
    rewrite_weights(tiny_experiment.checkpoints.retain,
                    lambda sd: {k: v.to(torch.bfloat16) if "norm" in k else v for k, v in sd.items()})
    report = check_compatible(tiny_experiment)
    assert report.ok
    assert report.dtypes["clean"] == "bfloat16" and report.dtypes["forget"] == "float16"
    assert report.dtypes["corrupted"] == "float32"


def test_architecture_mismatch_named(tiny_experiment):
    cfg_path = tiny_experiment.checkpoints.retain / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="retain: architecture MistralForCausalLM differs"):
        check_compatible(tiny_experiment)


def test_tokenizer_mismatch_named(tiny_experiment):
    tj = tiny_experiment.checkpoints.forget / "tokenizer.json"
    data = json.loads(tj.read_text())
    vocab = data["model"]["vocab"]
    first = next(iter(vocab))
    vocab["zzz_new_token"] = vocab.pop(first)
    tj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="forget: tokenizer vocabulary differs"):
        check_compatible(tiny_experiment)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", [1], r"retain/config.json: expected a JSON object at the top level, got a list"),
        ("config.json", {"architectures": "LlamaForCausalLM"}, r"retain/config.json: 'architectures' must be a non"),
        ("config.json", {"model_type": 3}, r"retain/config.json: 'model_type' must be a string"),
        ("tokenizer.json", [1], r"retain/tokenizer.json: expected a JSON object at the top level, got a list"),
        ("tokenizer.json", {"model": [1]}, r"retain/tokenizer.json: 'model' must be an object, got a list"),
    ],
)
def test_config_or_tokenizer_json_of_the_wrong_type_names_the_file(tiny_experiment, name, content, message):
    (tiny_experiment.checkpoints.retain / name).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        check_compatible(tiny_experiment)


def test_config_value_of_the_wrong_type_names_file_and_key(tiny_experiment):
    cfg_path = tiny_experiment.checkpoints.corrupted / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] = "32"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"corrupted/config.json: hidden_size must be a positive integer, got '32'"):
        check_compatible(tiny_experiment)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_invalid_utf8_json_names_file_byte_and_offset(tiny_experiment, name):
    path = tiny_experiment.checkpoints.forget / name
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=rf"forget/{name}: not valid UTF-8 \(byte 0xff at offset 7\)"):
        check_compatible(tiny_experiment)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_key_value_heads", 4, r"num_key_value_heads=4 × head_dim=8, hidden_size=32\) implies tensor "
         r"model.layers.0.self_attn.k_proj.weight of shape \[32, 32\], but .*model.safetensors has \[16, 32\]"),
        ("intermediate_size", 48, r"intermediate_size=48, hidden_size=32\) implies tensor "
         r"model.layers.0.mlp.down_proj.weight of shape \[32, 48\], but .* has \[32, 64\] \(5 more tensors"),
        ("vocab_size", 999, r"vocab_size=999, hidden_size=32\) implies tensor lm_head.weight of shape \[999, 32\]"),
        ("hidden_size", 64, r"implies tensor .* of shape .*64"),
        ("num_hidden_layers", 3, r"says num_hidden_layers=3, but the weights in .* have layers 0..1 \(2 in all\)"),
    ],
)
def test_config_that_contradicts_the_weights_is_reported_by_role_and_tensor(tiny_experiment, key, value, message):
    for folder in tiny_experiment.checkpoints.as_dict().values():  # all share the mistake: no cross-role diff
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg[key] = value
        cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"not compatible:\n  corrupted: config.json \(?.*" + message):
        check_compatible(tiny_experiment)
