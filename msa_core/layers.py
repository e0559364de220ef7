"""Where in the network forgetting happens: per-layer weight distances and representation similarity.

Two measures, both per layer (``embed``, ``L0`` … ``L{n-1}``, ``head``, grouped by parameter
name as :func:`msa_core.vectors.layer_norms` does):

- :func:`weight_distances`: the relative L2 distance ‖θ_a − θ_b‖ / ‖θ_b‖ over the layer's
  tensors (concatenated), accumulated in float64 slice by slice (no float64 copy of a model);
- :func:`linear_cka` (Kornblith et al. 2019, "Similarity of neural network representations
  revisited", eq. 2): linear centred kernel alignment of two models' hidden states on the
  same tokens, 1 = the same representation up to a rotation and a scale, 0 = unrelated.
  :func:`hidden_state_grams` runs a model on a handful of QA texts once and keeps, per
  layer, the centred Gram matrix of its token representations, so comparing two models is
  then :func:`cka_from_grams` (a dot product of two N×N matrices, N = tokens).

Headless and stateless: the app memoises the results (``studio/resources.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from msa_core.prompts import encode_qa
from msa_core.targets import Target, model_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from msa_core.engine import Engine

_LAYER_IN_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Elements per slice when a difference is accumulated in float64: 4M elements = 32 MB of
# float64 scratch at most, whatever the size of the tensor (an 8B model's embedding is 525M).
_SLICE = 1 << 22


def layer_of(name: str) -> tuple[str, float]:
    """(layer label, sort position) of a parameter: ``…layers.N.…`` → ('LN', N); an embedding
    → ('embed', −1); anything else (final norm, LM head) → ('head', +inf)."""
    m = _LAYER_IN_NAME.search(name)
    if m:
        return f"L{int(m.group(1))}", float(m.group(1))
    if "embed" in name:
        return "embed", -1.0
    return "head", math.inf


@dataclass(frozen=True)
class LayerDistance:
    """‖θ_a − θ_b‖ and ‖θ_b‖ over one layer's tensors, and their ratio (0 when ‖θ_b‖ = 0)."""

    layer: str
    distance: float
    norm: float
    tensors: int

    @property
    def relative(self) -> float:
        return self.distance / self.norm if self.norm > 0 else 0.0


def _squared_sums(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(Σ (a − b)², Σ b²) in float64, one slice at a time."""
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    diff2 = norm2 = 0.0
    for start in range(0, fb.numel(), _SLICE):
        sa = fa[start:start + _SLICE].to(device=fb.device, dtype=torch.float64)
        sb = fb[start:start + _SLICE].to(torch.float64)
        diff2 += float(torch.sum((sa - sb) ** 2))
        norm2 += float(torch.sum(sb * sb))
    return diff2, norm2


def weight_distances(
    a: Iterable[tuple[str, torch.Tensor]], b: Mapping[str, torch.Tensor]
) -> list[LayerDistance]:
    """Per-layer ‖θ_a − θ_b‖ / ‖θ_b‖ (see :class:`LayerDistance`), in model order.

    ``a``: named tensors (e.g. ``model.named_parameters()``); ``b``: the same names → tensors.
    Non-floating tensors are skipped. KeyError names a tensor of ``a`` missing from ``b``;
    ValueError names one whose shape differs.
    """
    acc: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    for name, ta in a:
        if not ta.is_floating_point():
            continue
        if name not in b:
            raise KeyError(f"weight_distances: tensor {name} has no counterpart in the other model")
        tb = b[name]
        if tuple(ta.shape) != tuple(tb.shape):
            raise ValueError(f"weight_distances: tensor {name} has shape {list(ta.shape)} in one model and "
                             f"{list(tb.shape)} in the other")
        key, pos = layer_of(name)
        d2, n2 = _squared_sums(ta, tb)
        row = acc.setdefault(key, [0.0, 0.0, 0.0])
        row[0] += d2
        row[1] += n2
        row[2] += 1
        order[key] = pos
    return [LayerDistance(k, math.sqrt(acc[k][0]), math.sqrt(acc[k][1]), int(acc[k][2]))
            for k in sorted(acc, key=lambda k: order[k])]


def corrupted_weights(engine: Engine) -> dict[str, torch.Tensor]:
    """θ_corrupted by parameter name: the engine's pristine copies for the parameters α/β
    apply to, the working model's own tensors for the others (never rewritten)."""
    out = dict(engine.model.named_parameters())
    out.update(zip(engine.param_names, engine.plan.pristine))
    return out


def distances_at(engine: Engine, alpha: float, beta: float) -> dict[str, list[LayerDistance]]:
    """Per-layer relative distances of the unlearned model at (α, β): ``'corrupted'`` (to
    θ_corrupted) and, when the experiment has one, ``'reference'`` (to the retain-only model)."""
    reference = engine.side_model("reference")  # loaded (once) before taking the engine's lock
    corrupted = corrupted_weights(engine)
    with engine.session(alpha, beta) as model:
        live = list(model.named_parameters())
        out = {"corrupted": weight_distances(live, corrupted)}
        if reference is not None:
            out["reference"] = weight_distances(live, dict(reference.named_parameters()))
    return out


def reference_distances(engine: Engine) -> list[LayerDistance]:
    """Per-layer ‖θ_reference − θ_corrupted‖ / ‖θ_corrupted‖ (how far 'never learned' is from
    the corrupted model); empty when the experiment has no reference checkpoint."""
    reference = engine.side_model("reference")
    if reference is None:
        return []
    return weight_distances(reference.named_parameters(), corrupted_weights(engine))


# ----------------------------------------------------------------------------- representations
def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """K = Xc·Xcᵀ (float64, N×N) of the rows of ``x`` (N samples × D features), columns centred."""
    if x.dim() != 2:
        raise ValueError(f"centred_gram: expected a 2-D (samples × features) tensor, got shape {list(x.shape)}")
    xc = x.detach().to(torch.float64)
    xc = xc - xc.mean(dim=0, keepdim=True)
    return xc @ xc.T


def cka_from_grams(ka: torch.Tensor, kb: torch.Tensor) -> float:
    """Linear CKA from two centred Gram matrices of the same N samples: ⟨Ka, Kb⟩ / (‖Ka‖·‖Kb‖).

    ⟨Ka, Kb⟩_F = ‖Xcᵀ Yc‖²_F, so this equals :func:`linear_cka` on the features. NaN when
    either representation is constant (a zero Gram matrix): similarity is undefined there.
    """
    if ka.shape != kb.shape:
        raise ValueError(f"cka_from_grams: Gram matrices of different sizes {list(ka.shape)} and {list(kb.shape)}")
    ka, kb = ka.to(torch.float64), kb.to(torch.float64)
    denom = float(torch.linalg.matrix_norm(ka) * torch.linalg.matrix_norm(kb))
    if denom == 0.0:
        return math.nan
    return float(torch.sum(ka * kb)) / denom


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same N samples (N × D1 and N × D2), in float64."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: {x.shape[0]} samples in one representation and {y.shape[0]} in the other")
    return cka_from_grams(centred_gram(x), centred_gram(y))


@dataclass(frozen=True)
class HiddenGrams:
    """Per layer, the centred Gram matrix of a model's hidden states on a fixed set of QA texts.

    ``layers[i]`` names ``grams[i]``: 'embed' (the embedding output), then 'L0' … (each
    decoder layer's output, as ``output_hidden_states`` returns them: the last one after the
    final norm). ``tokens`` is N, the number of token positions over all texts.
    """

    layers: tuple[str, ...]
    grams: tuple[torch.Tensor, ...]
    tokens: int


def qa_token_ids(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], fmt: Optional[str] = None
) -> list[list[int]]:
    """Token ids of each (question, answer) text in the QA format ``fmt`` (:mod:`msa_core.prompts`)."""
    out = []
    for q, a in pairs:
        prompt, answer = encode_qa(tokenizer, q, a, fmt)
        out.append(prompt + answer)
    return out


@torch.no_grad()
def hidden_state_grams(model: PreTrainedModel, token_ids: Sequence[Sequence[int]]) -> HiddenGrams:
    """Run ``model`` on each text (one at a time: no padding in the representations) and keep
    the centred Gram matrix of every layer's hidden states over all their tokens."""
    if not token_ids or not all(token_ids):
        raise ValueError("hidden_state_grams: needs at least one non-empty text")
    device = next(model.parameters()).device
    per_layer: list[list[torch.Tensor]] = []
    for ids in token_ids:
        out = model(input_ids=torch.tensor([list(ids)], device=device), output_hidden_states=True)
        states = out.hidden_states
        if not per_layer:
            per_layer = [[] for _ in states]
        for i, h in enumerate(states):
            # float32 on the CPU: exact for bf16/fp16 models, half the memory of float64 until the Gram.
            per_layer[i].append(h[0].to(device="cpu", dtype=torch.float32))
    grams = tuple(centred_gram(torch.cat(rows, dim=0)) for rows in per_layer)
    names = ("embed",) + tuple(f"L{i}" for i in range(len(grams) - 1))
    return HiddenGrams(names, grams, int(grams[0].shape[0]))


def cka_per_layer(a: HiddenGrams, b: HiddenGrams) -> list[tuple[str, float]]:
    """(layer, linear CKA) for two models' :class:`HiddenGrams` on the same texts."""
    if a.layers != b.layers or a.tokens != b.tokens:
        raise ValueError(f"cka_per_layer: different layers or texts ({len(a.layers)} layers / {a.tokens} tokens "
                         f"vs {len(b.layers)} / {b.tokens})")
    return [(name, cka_from_grams(ka, kb)) for name, ka, kb in zip(a.layers, a.grams, b.grams)]


def target_grams(engine: Engine, target: Target, pairs: Sequence[tuple[str, str]]) -> HiddenGrams:
    """:func:`hidden_state_grams` of ``target``'s model (the unlearned model at a point holds the
    engine's lock meanwhile) on the (question, answer) texts ``pairs``."""
    ids = qa_token_ids(engine.tokenizer, pairs, engine.experiment.prompt_format)
    with model_for(engine, target) as model:
        return hidden_state_grams(model, ids)
