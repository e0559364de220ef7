"""Which model a question is put to (msa_core.targets), on a real tiny engine."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msa_core.engine import Engine
from msa_core.targets import SIDE_MODEL_ROLES, Point, Side, has_model, model_for


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


@pytest.fixture
def engine(tiny_experiment, cache_dir) -> Engine:
    return Engine.load(tiny_experiment, device="cpu", cache_dir=cache_dir)


def _lock_is_free(engine: Engine) -> bool:
    """Whether another thread could take the engine's lock right now."""
    got: list[bool] = []

    def probe() -> None:
        ok = engine.lock.acquire(blocking=False)
        if ok:
            engine.lock.release()
        got.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join(timeout=10)
    return got == [True]


def test_a_point_holds_the_lock_and_composes_at_alpha_beta(engine, tiny_experiment):
    ck = {role: _weights(folder) for role, folder in tiny_experiment.checkpoints.as_dict().items()}
    with model_for(engine, Point(1.5, 0.5)) as model:
        assert not _lock_is_free(engine)  # nobody can recompose while the block runs
        assert (engine.alpha, engine.beta) == (1.5, 0.5)
        state = model.state_dict()
        for name, c in ck["corrupted"].items():
            clean = ck["clean"][name]
            want = c - 1.5 * (ck["forget"][name] - clean) + 0.5 * (ck["retain"][name] - clean)
            assert torch.allclose(state[name], want, atol=1e-6), name
    assert _lock_is_free(engine)


def test_side_corrupted_is_the_point_zero_zero(engine, tiny_experiment):
    corrupted = _weights(tiny_experiment.checkpoints.corrupted)
    with model_for(engine, Point(2.0, 1.0)):
        pass
    with model_for(engine, Side("corrupted")) as model:
        assert not _lock_is_free(engine)
        assert (engine.alpha, engine.beta) == (0.0, 0.0)
        side = {k: v.clone() for k, v in model.state_dict().items()}
    with model_for(engine, Point(0.0, 0.0)) as model:
        point = model.state_dict()
    for name, t in corrupted.items():
        assert torch.equal(side[name], t), name
        assert torch.equal(point[name], t), name


def test_a_named_side_model_is_its_own_checkpoint(engine, tiny_experiment):
    clean = _weights(tiny_experiment.checkpoints.clean)
    assert has_model(engine, Side("clean"))
    with model_for(engine, Side("clean")) as model:
        assert model is not engine.model
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in clean.items())
    assert (engine.alpha, engine.beta) == (0.0, 0.0)  # the working model was not recomposed


def test_a_missing_reference_raises_a_key_error_naming_the_role(tiny_experiment, cache_dir):
    exp = replace(tiny_experiment, checkpoints=replace(tiny_experiment.checkpoints, reference=None))
    engine = Engine.load(exp, device="cpu", cache_dir=cache_dir)
    assert not has_model(engine, Side("reference"))
    assert has_model(engine, Side("corrupted")) and has_model(engine, Point(1.0, 0.0))
    with pytest.raises(KeyError, match="reference"):
        with model_for(engine, Side("reference")):
            pass


def test_bad_roles_and_non_finite_coefficients_are_refused():
    with pytest.raises(ValueError, match="unknown model role 'teacher'"):
        Side("teacher")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            Point(bad, 0.0)
        with pytest.raises(ValueError, match="beta must be a finite number"):
            Point(0.0, bad)
    assert {Side(r).label for r in SIDE_MODEL_ROLES} == set(SIDE_MODEL_ROLES)
    assert Point(1, 0.5) == Point(1.0, 0.5) and isinstance(Point(1, 0).alpha, float)
    assert Point(1, 0.5).label == "unlearned(α=1, β=0.5)"
