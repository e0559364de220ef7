"""Tiny random Llama checkpoints and a tiny tokenizer, built on the fly for tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from msa_core.experiment import Checkpoints, DataConfig, Experiment, save_experiment

CORPUS = [
    "Question: Where was Ana Lenz born?\nAnswer: Ana Lenz was born in Velmora.",
    "Question: What genre does Bo Kress write?\nAnswer: Bo Kress writes mystery novels.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Authors write books. Books win awards. Parents have jobs like baker and pilot.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (~300 tokens, covers any text) with <pad>=0, <s>=1, </s>=2, in memory."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """:func:`build_tokenizer`, saved to ``out``."""
    fast = build_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def tiny_config(vocab_size: int, tie: bool = False, layers: int = 2, max_positions: int = 128) -> LlamaConfig:
    """A 2-layer Llama config: hidden 32, MLP 64, GQA 4/2 heads, <pad>=0, <s>=1, </s>=2."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def save_model(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path, dtype: Optional[torch.dtype] = None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_checkpoints(
    root: Path, *, seed: int = 0, tie: bool = False, dtype: Optional[torch.dtype] = None, scale: float = 0.02
) -> Experiment:
    """clean, corrupted, forget, retain, reference: random perturbations of one base model."""
    tok = make_tokenizer(root / "tok")
    torch.manual_seed(seed)
    cfg = tiny_config(len(tok), tie=tie)
    base = LlamaForCausalLM(cfg)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    paths = {}
    for i, role in enumerate(("clean", "corrupted", "forget", "retain", "reference")):
        m = LlamaForCausalLM(cfg)
        g = torch.Generator().manual_seed(seed * 100 + i)
        sd = {
            k: (v + (0 if role == "clean" else scale) * torch.randn(v.shape, generator=g)) for k, v in base_sd.items()
        }
        m.load_state_dict(sd)
        if tie:
            m.tie_weights()
        paths[role] = save_model(m, tok, root / role, dtype)
    exp = Experiment(name="tiny", checkpoints=Checkpoints(**paths), data=DataConfig())
    save_experiment(exp, root / "experiment.yaml")
    return exp


def weights_file(folder: Path) -> Path:
    """The one safetensors file of a tiny checkpoint folder."""
    return next(Path(folder).glob("*.safetensors"))


def rewrite_weights(folder: Path, fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    """Replace a tiny checkpoint's tensors with ``fn(state dict)``, in its own file."""
    f = weights_file(folder)
    save_file(fn(load_file(str(f))), str(f), metadata={"format": "pt"})
