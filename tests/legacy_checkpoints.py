"""Tiny checkpoint sets written the way hub checkpoints of Llama-3 models are (transformers 4.x
files): ``config.json`` with ``rope_theta`` 500000 and ``rope_scaling`` of type llama3 and
``torch_dtype``, a ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast`` and holding a
Llama-3-style chat template with a system prompt. For the export tests (tests/test_export.py,
tests/test_export_legacy.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import make_checkpoints

from msa_core.experiment import Experiment

HUB_ID = "example-org/tiny-llama-3"
ROPE_THETA = 500000.0
ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_type": "llama3",
}
# Llama-3's template, shortened: header tokens as plain text (the tiny vocabulary is byte-level).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where was Ana Lenz born?"},
]


def legacy_config(folder: Path) -> dict:
    """The folder's config.json rewritten as transformers 4.x writes a Llama-3 config."""
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("rope_parameters", "dtype", "transformers_version", "rope_theta", "rope_scaling"):
        cfg.pop(key, None)
    cfg.update({
        "_name_or_path": HUB_ID,
        "rope_theta": ROPE_THETA,
        "rope_scaling": dict(ROPE_SCALING),
        "torch_dtype": "float32",
        "transformers_version": "4.45.1",
    })
    return cfg


def make_legacy_checkpoints(root: Path) -> Experiment:
    """:func:`tiny.make_checkpoints` (fp32), each folder's config and tokenizer files rewritten as
    4.x files of a Llama-3 model (see the module docstring)."""
    exp = make_checkpoints(root)
    for folder in exp.checkpoints.as_dict().values():
        (folder / "config.json").write_text(json.dumps(legacy_config(folder), indent=2) + "\n")
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "model_max_length": 128,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }, indent=2) + "\n")
    return exp


def make_v5_checkpoints(root: Path) -> Experiment:
    """The same Llama-3-style set with every config and tokenizer re-saved by transformers 5
    (``rope_parameters``, ``dtype``, ``TokenizersBackend``, ``chat_template.jinja``): what a
    checkpoint fine-tuned or built here looks like."""
    from transformers import AutoConfig, AutoTokenizer

    exp = make_legacy_checkpoints(root)
    for folder in exp.checkpoints.as_dict().values():
        AutoConfig.from_pretrained(folder).save_pretrained(folder)
        AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
        cfg = json.loads((folder / "config.json").read_text())
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        if "rope_theta" in cfg or "rope_parameters" not in cfg or "chat_template" in tok:
            raise RuntimeError(f"{folder}: transformers no longer writes its 5.x format; update this fixture")
    return exp
