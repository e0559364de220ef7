"""Are checkpoints compatible: with each other (architecture, tensor names, shapes, dtypes,
tokenizer vocabulary) and each with its own ``config.json`` (the tensor shapes a Llama-style
config implies). Every problem names the role, the tensor or the config key.

Floating-point dtypes may differ between checkpoints (e.g. clean bf16, corrupted fp32, forget
fp16): the vectors are computed in fp32 from the stored values and the engine composes in fp32
from θ_corrupted's stored values, rounding once to its dtype. Only a floating tensor against a
non-floating one (or two different non-floating dtypes) is a dtype mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from msa_core.checkpoints import locate_tensors, read_config
from msa_core.experiment import Experiment
from msa_core.untrusted import json_type, read_json_object


@dataclass(frozen=True)
class CompatReport:
    """Outcome of comparing checkpoints: roles, sizes, and every problem found."""

    roles: tuple[str, ...]
    architecture: str
    num_tensors: int
    num_parameters: int
    dtypes: dict[str, str]
    vocab_size: Optional[int]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_float(dtype: str) -> bool:
    """Whether a tensor-index dtype name (float32, bfloat16, float16, float64, …) is floating point."""
    return dtype.startswith(("float", "bfloat"))


def _tokenizer_vocab(folder: Path) -> Optional[dict[str, int]]:
    tj = Path(folder) / "tokenizer.json"
    if not tj.is_file():
        return None
    model = read_json_object(tj).get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"{tj}: 'model' must be an object, got {json_type(model)}")
    vocab = model.get("vocab")
    return vocab if isinstance(vocab, dict) else None


# Llama-style decoders (the same tensor names and shapes): the config implies every weight's shape.
_LLAMA_STYLE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}
_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _config_int(cfg: dict[str, Any], key: str, cfg_path: Path) -> Optional[int]:
    """A positive integer config value, None when absent; any other type or value is refused by name."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{cfg_path}: {key} must be a positive integer, got {value!r:.100}")
    return value


def _implied_shapes(
    cfg: dict[str, Any], cfg_path: Path
) -> Optional[tuple[int, dict[str, tuple[tuple[int, ...], str]]]]:
    """(num_hidden_layers, tensor suffix → (shape, the config values that imply it)) for a Llama-style config.

    None when the config leaves a size to the library's defaults (nothing to compare against).
    """
    keys = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "num_hidden_layers")
    values = {key: _config_int(cfg, key, cfg_path) for key in (*keys, "num_key_value_heads", "head_dim")}
    if any(values[key] is None for key in keys):
        return None
    hidden, heads, inter, vocab, layers = (int(values[key] or 0) for key in keys)
    kv = values["num_key_value_heads"] or heads
    head_dim = values["head_dim"] or hidden // heads
    q = (f"num_attention_heads={heads} × head_dim={head_dim}, hidden_size={hidden}", heads * head_dim)
    k = (f"num_key_value_heads={kv} × head_dim={head_dim}, hidden_size={hidden}", kv * head_dim)
    mlp = f"intermediate_size={inter}, hidden_size={hidden}"
    norm = f"hidden_size={hidden}"
    shapes: dict[str, tuple[tuple[int, ...], str]] = {
        "model.embed_tokens.weight": ((vocab, hidden), f"vocab_size={vocab}, hidden_size={hidden}"),
        "lm_head.weight": ((vocab, hidden), f"vocab_size={vocab}, hidden_size={hidden}"),
        "model.norm.weight": ((hidden,), norm),
        "self_attn.q_proj.weight": ((q[1], hidden), q[0]),
        "self_attn.q_proj.bias": ((q[1],), q[0]),
        "self_attn.o_proj.weight": ((hidden, q[1]), q[0]),
        "mlp.gate_proj.weight": ((inter, hidden), mlp),
        "mlp.up_proj.weight": ((inter, hidden), mlp),
        "mlp.down_proj.weight": ((hidden, inter), mlp),
        "input_layernorm.weight": ((hidden,), norm),
        "post_attention_layernorm.weight": ((hidden,), norm),
    }
    for proj in ("k_proj", "v_proj"):
        shapes[f"self_attn.{proj}.weight"] = ((k[1], hidden), k[0])
        shapes[f"self_attn.{proj}.bias"] = ((k[1],), k[0])
    return layers, shapes


def config_problems(
    role: str, folder: Path, tensors: Optional[dict[str, tuple[str, tuple[int, ...], Path]]] = None
) -> list[str]:
    """Where a Llama-style ``config.json`` contradicts the weights (shapes, layer count), by role and tensor.

    A config that disagrees with its weights passes a name-and-shape comparison between
    checkpoints (they may all share the mistake) and only fails inside the model loader;
    this names the config values and the tensor instead. Other architectures: [] (their
    load errors are reported by ``checkpoints.load_model``). ``tensors``: the folder's
    :func:`locate_tensors`, when the caller has already read them.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    _arch, cfg = read_config(folder)
    if cfg.get("model_type") not in _LLAMA_STYLE:
        return []
    implied = _implied_shapes(cfg, cfg_path)
    if implied is None:
        return []
    layers, shapes = implied
    problems: list[str] = []
    wrong = 0
    seen_layers: set[int] = set()
    for name, (_dtype, shape, f) in (tensors if tensors is not None else locate_tensors(folder)).items():
        m = _LAYER_TENSOR.match(name)
        if m:
            seen_layers.add(int(m.group(1)))
        want = shapes.get(m.group(2) if m else name)
        if want is not None and shape != want[0]:
            wrong += 1
            if wrong == 1:  # one example per role; the count says how far it goes
                problems.append(
                    f"{role}: {cfg_path.name} ({want[1]}) implies tensor {name} of shape {list(want[0])}, "
                    f"but {f} has {list(shape)}"
                )
    if wrong > 1:
        problems[0] += f" ({wrong - 1} more tensors disagree with {cfg_path} too)"
    if seen_layers and seen_layers != set(range(layers)):
        problems.append(
            f"{role}: {cfg_path.name} says num_hidden_layers={layers}, but the weights in {folder} have "
            f"layers {min(seen_layers)}..{max(seen_layers)} ({len(seen_layers)} in all)"
        )
    return problems


def compare_checkpoints(folders: Mapping[str, Path], max_report: int = 10) -> CompatReport:
    """Compare architecture, tensor names, shapes, dtypes and tokenizer vocabularies.

    The first folder is the base every other is compared against; problems name the
    role and the tensor. Never raises for a mismatch (see :func:`check_compatible`).
    """
    roles = list(folders)
    base_role = roles[0]
    base_arch, base_cfg = read_config(folders[base_role])
    tensors = {role: locate_tensors(folders[role]) for role in roles}
    indexes = {role: {name: (dt, shape) for name, (dt, shape, _f) in t.items()} for role, t in tensors.items()}
    base_index = indexes[base_role]
    base_vocab = _tokenizer_vocab(folders[base_role])
    problems: list[str] = config_problems(base_role, folders[base_role], tensors[base_role])
    for role in roles[1:]:
        arch, cfg = read_config(folders[role])
        if arch != base_arch:
            problems.append(f"{role}: architecture {arch} differs from {base_role}'s {base_arch}")
        for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "head_dim"):
            if cfg.get(key) != base_cfg.get(key):
                problems.append(f"{role}: config {key}={cfg.get(key)} differs from {base_role}'s {base_cfg.get(key)}")
        problems.extend(config_problems(role, folders[role], tensors[role]))
        index = indexes[role]
        missing = sorted(set(base_index) - set(index))
        extra = sorted(set(index) - set(base_index))
        for name in missing[:max_report]:
            problems.append(f"{role}: tensor {name} missing (present in {base_role})")
        for name in extra[:max_report]:
            problems.append(f"{role}: extra tensor {name} (absent from {base_role})")
        shown = 0
        for name in sorted(set(index) & set(base_index)):
            (dt, shape), (bdt, bshape) = index[name], base_index[name]
            if shape != bshape:
                problems.append(f"{role}: tensor {name} has shape {list(shape)}, {base_role} has {list(bshape)}")
                shown += 1
            elif dt != bdt and not (_is_float(dt) and _is_float(bdt)):
                # Floating dtypes may differ (bf16 / fp16 / fp32 sets, as mergekit merges them): the
                # vectors and the compose run in fp32 and round once to the engine's dtype. A float
                # against an integer or bool tensor (or two integer types) is a real mismatch.
                problems.append(f"{role}: tensor {name} has dtype {dt}, {base_role} has {bdt}")
                shown += 1
            if shown >= max_report:
                break
        vocab = _tokenizer_vocab(folders[role])
        if base_vocab is not None and vocab is not None and vocab != base_vocab:
            diff = sorted(set(vocab.items()) ^ set(base_vocab.items()))[:3]
            problems.append(f"{role}: tokenizer vocabulary differs from {base_role}'s (e.g. {diff})")
    n_params = 0
    for _dtype, shape in base_index.values():
        n = 1
        for s in shape:
            n *= s
        n_params += n
    return CompatReport(
        roles=tuple(roles),
        architecture=base_arch,
        num_tensors=len(base_index),
        num_parameters=n_params,
        dtypes={r: sorted({d for d, _ in indexes[r].values()})[0] for r in roles},
        vocab_size=base_cfg.get("vocab_size"),
        problems=tuple(problems),
    )


def check_compatible(exp: Experiment) -> CompatReport:
    """Compare all checkpoints of an experiment (corrupted is the base); raise ValueError on any mismatch."""
    folders = {"corrupted": exp.checkpoints.corrupted}
    folders.update({r: p for r, p in exp.checkpoints.as_dict().items() if r != "corrupted"})
    report = compare_checkpoints(folders)
    if not report.ok:
        shown = "\n  ".join(report.problems[:20])
        raise ValueError(f"checkpoints of experiment {exp.name!r} are not compatible:\n  {shown}")
    return report
