"""Per-layer weight distances and linear CKA (msa_core/layers.py), against independent float64 computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tokenizer, tiny_config
from transformers import LlamaForCausalLM

from msa_core import layers
from msa_core.engine import Engine
from msa_core.targets import Point, Side


def _cka_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s feature-space formula ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F), centred columns, float64."""
    x = x.astype(np.float64) - x.mean(axis=0)
    y = y.astype(np.float64) - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_linear_cka_equals_an_independent_float64_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g)
    y = 0.5 * x[:, :12] + torch.randn(40, 12, generator=g)  # related but not the same
    expected = _cka_numpy(x.numpy(), y.numpy())
    assert 0.05 < expected < 0.95
    assert layers.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    assert layers.cka_from_grams(layers.centred_gram(x), layers.centred_gram(y)) == pytest.approx(expected, rel=1e-10)


def test_linear_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    assert layers.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_is_invariant_to_rotations_scaling_and_shifts():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 10, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(10, 10, generator=g, dtype=torch.float64))
    base = layers.linear_cka(x, y)
    q = _random_orthogonal(10, 3)
    assert layers.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert layers.linear_cka(x, 7.5 * y) == pytest.approx(base, rel=1e-10)
    assert layers.linear_cka(x + 3.0, y) == pytest.approx(base, rel=1e-10)  # columns are centred
    # ...but not to a non-isotropic scaling of the features.
    stretch = torch.diag(torch.tensor([50.0] + [1.0] * 9, dtype=torch.float64))
    assert abs(layers.linear_cka(x @ stretch, y) - base) > 1e-3


def test_linear_cka_rejects_mismatched_samples_and_constant_representations():
    with pytest.raises(ValueError, match="10 samples in one representation and 9"):
        layers.linear_cka(torch.zeros(10, 3), torch.zeros(9, 3))
    assert math.isnan(layers.linear_cka(torch.ones(5, 3), torch.randn(5, 3)))


def _two_tiny_models(tmp_path: Path) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    tok = make_tokenizer(tmp_path / "tok")
    torch.manual_seed(4)
    a, b = LlamaForCausalLM(tiny_config(len(tok))), LlamaForCausalLM(tiny_config(len(tok)))
    return a, b


def test_weight_distances_equal_a_hand_computation_per_layer(tmp_path, monkeypatch):
    a, b = _two_tiny_models(tmp_path)
    pa = {n: p.detach().double().numpy() for n, p in a.named_parameters()}
    pb = {n: p.detach().double().numpy() for n, p in b.named_parameters()}
    groups = {"embed": [n for n in pa if n.startswith("model.embed_tokens")],
              "L0": [n for n in pa if ".layers.0." in n], "L1": [n for n in pa if ".layers.1." in n],
              "head": [n for n in pa if n in ("model.norm.weight", "lm_head.weight")]}
    assert sum(map(len, groups.values())) == len(pa)
    expected = {}
    for key, names in groups.items():
        d = math.sqrt(sum(float(np.sum((pa[n] - pb[n]) ** 2)) for n in names))
        norm = math.sqrt(sum(float(np.sum(pb[n] ** 2)) for n in names))
        expected[key] = (d / norm, len(names))
    # Small slices: the float64 accumulation crosses slice boundaries inside every tensor.
    monkeypatch.setattr(layers, "_SLICE", 97)
    rows = layers.weight_distances(a.named_parameters(), dict(b.named_parameters()))
    assert [r.layer for r in rows] == ["embed", "L0", "L1", "head"]
    for r in rows:
        assert r.relative == pytest.approx(expected[r.layer][0], rel=1e-12)
        assert r.tensors == expected[r.layer][1]
    same = layers.weight_distances(a.named_parameters(), dict(a.named_parameters()))
    assert all(r.distance == 0.0 and r.relative == 0.0 for r in same)


def test_weight_distances_name_a_missing_or_misshaped_tensor(tmp_path):
    a, b = _two_tiny_models(tmp_path)
    other = dict(b.named_parameters())
    del other["model.norm.weight"]
    with pytest.raises(KeyError, match="model.norm.weight"):
        layers.weight_distances(a.named_parameters(), other)
    other = dict(b.named_parameters(), **{"model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \[32\] in one model and \[3\]"):
        layers.weight_distances(a.named_parameters(), other)


def _files(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_distances_at_a_point_match_the_checkpoint_files(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    c, f, r, z, ref = (_files(getattr(tiny_experiment.checkpoints, k))
                       for k in ("corrupted", "forget", "retain", "clean", "reference"))
    alpha, beta = 1.5, 0.5
    unlearned = {n: c[n].double() - alpha * (f[n].double() - z[n].double()) + beta * (r[n].double() - z[n].double())
                 for n in c}
    out = layers.distances_at(engine, alpha, beta)
    for side, other in (("corrupted", c), ("reference", ref)):
        rows = {row.layer: row for row in out[side]}
        names = [n for n in c if ".layers.1." in n]
        d = math.sqrt(sum(float(torch.sum((unlearned[n] - other[n].double()) ** 2)) for n in names))
        norm = math.sqrt(sum(float(torch.sum(other[n].double() ** 2)) for n in names))
        # fp32 composition against a float64 oracle: relative error of the difference ~1e-6.
        assert rows["L1"].relative == pytest.approx(d / norm, rel=1e-4)
    assert all(row.distance == 0.0 for row in layers.distances_at(engine, 0.0, 0.0)["corrupted"])
    ref_rows = layers.reference_distances(engine)
    assert [row.layer for row in ref_rows] == [row.layer for row in out["corrupted"]]
    assert all(row.relative > 0 for row in ref_rows)


def test_hidden_state_grams_compare_models_layer_by_layer(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    pairs = [("Where was Ana Lenz born?", "In Velmora."), ("What genre does Bo Kress write?", "Mystery.")]
    corrupted = layers.target_grams(engine, Side("corrupted"), pairs)
    same = layers.target_grams(engine, Point(0.0, 0.0), pairs)
    far = layers.target_grams(engine, Point(3.0, 0.0), pairs)
    assert corrupted.layers == ("embed", "L0", "L1")
    ids = layers.qa_token_ids(engine.tokenizer, pairs)
    assert corrupted.tokens == sum(len(i) for i in ids)
    assert all(v == pytest.approx(1.0, abs=1e-9) for _, v in layers.cka_per_layer(corrupted, same))
    # An independent recomputation of the last layer's CKA from the hidden states themselves.
    def states(alpha: float) -> torch.Tensor:
        with engine.session(alpha, 0.0) as model, torch.no_grad():
            hs = [model(input_ids=torch.tensor([i]), output_hidden_states=True).hidden_states[-1][0] for i in ids]
        return torch.cat(hs).double()

    expected = _cka_numpy(states(0.0).numpy(), states(3.0).numpy())
    got = dict(layers.cka_per_layer(corrupted, far))
    assert got["L1"] == pytest.approx(expected, rel=1e-6)
    assert got["L1"] < 0.999
