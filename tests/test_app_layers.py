"""AppTest tests of the Layers page (pages/layers.py) on the tiny app experiment: the per-layer
weight distances follow the sliders and equal a float64 computation from the checkpoint files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions, set_alpha  # noqa: F401
from safetensors.torch import load_file


def _relative_l2(yaml_path: Path, alpha: float, beta: float, other: str, layer: str) -> float:
    """‖θ_u − θ_other‖ / ‖θ_other‖ over one decoder layer's tensors, in float64 from the files."""
    root = yaml_path.parent
    sd = {r: load_file(str(root / r / "model.safetensors"))
          for r in ("clean", "corrupted", "forget", "retain", "reference")}
    names = [k for k in sd["corrupted"] if f".layers.{layer[1:]}." in k]
    d2 = n2 = 0.0
    for k in names:
        c, f, r, z = (sd[x][k].double() for x in ("corrupted", "forget", "retain", "clean"))
        u = c - alpha * (f - z) + beta * (r - z)
        o = sd[other][k].double()
        d2 += float(((u - o) ** 2).sum())
        n2 += float((o ** 2).sum())
    return math.sqrt(d2) / math.sqrt(n2)


def test_layers_page_follows_the_sliders(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    at.sidebar.number_input(key="w_beta_num").set_value(0.5).run()
    set_alpha(at, 2.0)
    at.switch_page("pages/layers.py").run()
    no_exceptions(at)
    assert at.title[0].value.endswith("Layers")
    assert len(at.get("plotly_chart")) == 2  # weights and representations
    table = at.dataframe[0].value.set_index("layer")
    assert list(table.index[:4]) == ["embed", "L0", "L1", "head"]
    for layer in ("L0", "L1"):
        assert table.loc[layer, "relative L2 to corrupted"] == pytest.approx(
            _relative_l2(tiny_yaml, 2.0, 0.5, "corrupted", layer), rel=1e-4)
        assert table.loc[layer, "relative L2 to reference"] == pytest.approx(
            _relative_l2(tiny_yaml, 2.0, 0.5, "reference", layer), rel=1e-4)
    cka = [c for c in table.columns if c.startswith("CKA ")]
    assert set(cka) == {f"CKA {kind} texts vs {m}" for kind in ("forget", "retain")
                        for m in ("corrupted", "reference")}
    assert table.loc["L1", cka].between(-1e-9, 1 + 1e-9).all()
    assert table.loc["L1", "CKA forget texts vs corrupted"] < 1 - 1e-6

    # At α = β = 0 the unlearned model is the corrupted one: distance 0, CKA 1 on every layer.
    at.sidebar.button(key="w_preset_corrupted").click().run()
    no_exceptions(at)
    table = at.dataframe[0].value.set_index("layer")
    assert (table["relative L2 to corrupted"] == 0).all()
    assert table.loc[["embed", "L0", "L1"], "CKA forget texts vs corrupted"].tolist() == pytest.approx(
        [1.0, 1.0, 1.0], abs=1e-9)
    # The number of texts per set changes the samples, not the weights.
    at.number_input(key="w_layers_texts").set_value(2).run()
    no_exceptions(at)
    assert any("forget tokens" in c.value for c in at.caption)
