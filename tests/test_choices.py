"""θ_clean and epoch choices (msa_core.choices): candidates and epoch folders, per-choice vector
caches (separate, reused, counted builds), the engine's swap against a fresh engine and a float64
oracle, and errors that list the available choices.

The checkpoints hold values on coarse binary grids (as in test_rounding.py) so that every fp32
step of the compose is exact: the float64 oracle cast to the model dtype is then THE right value.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import rewrite_weights, weights_file

import msa_core.vectors as V
from msa_core import choices as C
from msa_core.choices import Choice, all_choices, choice_fingerprint, epochs_of, experiment_for, use_choice
from msa_core.engine import Engine
from msa_core.experiment import CleanCandidate, Experiment, load_experiment, save_experiment
from msa_core.fingerprints import experiment_fingerprint

# (integer bound, power-of-two step): θ_clean ≤ 8 bits, forget / retain deltas on 2^-10 / 2^-16
# grids, θ_corrupted on a 2^-20 grid; with the coefficients below every composed value is a
# multiple of 2^-20 below 4 in magnitude (22 bits: exact in fp32).
_CLEAN = (2**7, 7)
_FORGET_DELTA = (2**9, 10)
_RETAIN_DELTA = (2**9, 16)
_CORRUPTED = (2**20, 20)
POINTS = [(0.0, 0.0), (1.5, 0.75), (0.5, 2.0), (3.0, 0.25)]


def _grid(like: dict[str, torch.Tensor], gen: torch.Generator, spec: tuple[int, int]) -> dict[str, torch.Tensor]:
    bound, step = spec
    return {
        k: torch.randint(-bound + 1, bound, tuple(v.shape), generator=gen, dtype=torch.int64).double() * 2.0**-step
        for k, v in like.items()
    }


def _plus(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: a[k] + b[k] for k in a}


def _write(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Give a model folder these (fp32-exact) values."""
    rewrite_weights(folder, lambda sd: {k: tensors[k].to(torch.float32).contiguous() for k in sd})
    return folder


def _model(template: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A new complete model folder (config, tokenizer, weights) at ``dst`` holding ``tensors``."""
    shutil.copytree(template, dst, ignore=shutil.ignore_patterns("epoch-*"))
    return _write(dst, tensors)


@pytest.fixture(autouse=True)
def _fresh_memo():
    C.clear_memo()
    yield
    C.clear_memo()


@pytest.fixture
def history(tiny_experiment) -> Experiment:
    """The tiny experiment on exact grids, with epoch folders and a clean history:

    default: forget/epoch-1, forget/epoch-2, retain/epoch-1 (+ incomplete or misnamed folders);
    early: its own clean, forget (epoch-1) and retain (epoch-1, epoch-2);
    task-vector: clean = corrupted, forget / retain = corrupted + deltas.
    """
    ck = tiny_experiment.checkpoints
    root = ck.clean.parent
    like = load_file(str(weights_file(ck.clean)))
    gen = torch.Generator().manual_seed(13)
    clean, corrupted = _grid(like, gen, _CLEAN), _grid(like, gen, _CORRUPTED)

    def forget_of(base):
        return _plus(base, _grid(like, gen, _FORGET_DELTA))

    def retain_of(base):
        return _plus(base, _grid(like, gen, _RETAIN_DELTA))

    _write(ck.clean, clean)
    _write(ck.corrupted, corrupted)
    _write(ck.forget, forget_of(clean))
    _write(ck.retain, retain_of(clean))
    for k in (1, 2):
        _model(ck.clean, ck.forget / f"epoch-{k}", forget_of(clean))
    _model(ck.clean, ck.retain / "epoch-1", retain_of(clean))
    # not complete epoch folders: no weights, epoch 0, a file, a non-number
    (ck.forget / "epoch-3").mkdir()
    shutil.copy(ck.clean / "config.json", ck.forget / "epoch-3" / "config.json")
    _model(ck.clean, ck.forget / "epoch-0", forget_of(clean))
    (ck.forget / "epoch-4").write_text("not a folder")
    _model(ck.clean, ck.forget / "epoch-x", forget_of(clean))

    hist = root / "history"
    early = _grid(like, gen, _CLEAN)
    e_clean = _model(ck.clean, hist / "early", early)
    e_forget = _model(ck.clean, hist / "early-forget", forget_of(early))
    _model(ck.clean, e_forget / "epoch-1", forget_of(early))
    e_retain = _model(ck.clean, hist / "early-retain", retain_of(early))
    for k in (1, 2):
        _model(ck.clean, e_retain / f"epoch-{k}", retain_of(early))
    t_forget = _model(ck.clean, hist / "tv-forget", forget_of(corrupted))
    t_retain = _model(ck.clean, hist / "tv-retain", retain_of(corrupted))

    exp = Experiment(
        name="tiny",
        checkpoints=ck,
        clean_history=(
            CleanCandidate("early", e_clean, e_forget, e_retain, before_forget=True, step=5),
            C.task_vector_candidate(ck.corrupted, t_forget, t_retain, step=10),
        ),
    )
    path = save_experiment(exp, root / "history.yaml")
    loaded = load_experiment(path)  # through the file, as the app and CLI read it
    assert loaded.clean_history == exp.clean_history
    return loaded


def _files(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(weights_file(folder)))


def _oracle(exp: Experiment, alpha: float, beta: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """θ_c − α·(θ_f − θ_clean) + β·(θ_r − θ_clean) in float64 from the files, cast once to ``dtype``."""
    c, f, r, z = (_files(getattr(exp.checkpoints, k)) for k in ("corrupted", "forget", "retain", "clean"))
    return {
        n: (c[n].double() - alpha * (f[n].double() - z[n].double()) + beta * (r[n].double() - z[n].double())).to(dtype)
        for n in c
    }


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def test_choice_labels_and_validation():
    assert Choice("pretrain-e10", 3).label() == "θ_clean=pretrain-e10, e_f=3, e_r=final"
    assert Choice().label() == "θ_clean=default, e_f=final, e_r=final"
    assert Choice().is_default and not Choice(forget_epoch=1).is_default and not Choice("a").is_default
    for bad in ({"forget_epoch": 0}, {"retain_epoch": True}, {"forget_epoch": "2"}, {"clean": "a b"}):
        with pytest.raises(ValueError, match="choice"):
            Choice(**bad)


def test_candidates_epochs_and_all_choices(history):
    ck = history.checkpoints
    labels = [c.label for c in C.candidates(history)]
    assert labels == ["default", "early", "task-vector"]
    default = C.candidates(history)[0]
    assert (default.clean, default.forget, default.retain, default.before_forget) == (
        ck.clean, ck.forget, ck.retain, True)
    tv = C.candidate(history, "task-vector")
    assert tv.clean == ck.corrupted and tv.before_forget is False and tv.step == 10.0
    assert epochs_of(ck.forget) == [1, 2]  # epoch-3 (no weights), epoch-0, epoch-4 (a file), epoch-x skipped
    assert epochs_of(ck.retain) == [1]
    assert epochs_of(ck.clean) == [] and epochs_of(ck.clean / "missing") == []
    want = [Choice("default", f, r) for f in (None, 1, 2) for r in (None, 1)]
    want += [Choice("early", f, r) for f in (None, 1) for r in (None, 1, 2)]
    want += [Choice("task-vector")]
    assert all_choices(history) == want


def test_experiment_for_replaces_the_three_folders_and_lists_choices(history):
    ck = history.checkpoints
    assert experiment_for(history, Choice()) is history
    derived = experiment_for(history, Choice("early", forget_epoch=1, retain_epoch=2))
    early = C.candidate(history, "early")
    assert derived.checkpoints.clean == early.clean
    assert derived.checkpoints.forget == early.forget / "epoch-1"
    assert derived.checkpoints.retain == early.retain / "epoch-2"
    assert (derived.checkpoints.corrupted, derived.checkpoints.reference) == (ck.corrupted, ck.reference)
    assert experiment_for(history, Choice(forget_epoch=2)).checkpoints.forget == ck.forget / "epoch-2"
    # the default keeps today's fingerprint; every other choice has its own
    fps = {choice_fingerprint(history, c) for c in all_choices(history)}
    assert choice_fingerprint(history, Choice()) == experiment_fingerprint(history)
    assert len(fps) == len(all_choices(history))
    with pytest.raises(ValueError, match="no θ_clean candidate 'later'; available: default, early, task-vector"):
        experiment_for(history, Choice("later"))
    missing = r"forget fine-tune .* no complete epoch-3 folder; available epochs: final, 1, 2"
    with pytest.raises(ValueError, match=missing):
        experiment_for(history, Choice(forget_epoch=3))
    with pytest.raises(ValueError, match=r"early: retain fine-tune .* epoch-5 .*available epochs: final, 1, 2$"):
        experiment_for(history, Choice("early", retain_epoch=5))


def test_vector_caches_are_separate_per_choice_and_reused(history, cache_dir, monkeypatch):
    builds: list[Path] = []
    reads: list[Path] = []
    real_build, real_load = V._build, V._load

    def counting_build(exp, target, fingerprint, progress):
        builds.append(target)
        return real_build(exp, target, fingerprint, progress)

    def counting_load(target, meta):
        reads.append(target)
        return real_load(target, meta)

    monkeypatch.setattr(V, "_build", counting_build)
    monkeypatch.setattr(V, "_load", counting_load)
    engine = Engine.load(history, cache_dir=cache_dir)
    first_fp, default_path = engine.fingerprint, engine.vectors.path
    assert len(builds) == 1

    use_choice(engine, Choice("early"), cache_dir=cache_dir)
    assert len(builds) == 2 and engine.vectors.path != default_path
    assert engine.choice == Choice("early") and engine.base_experiment is history
    assert engine.fingerprint == choice_fingerprint(history, Choice("early")) != first_fp

    n_reads = len(reads)
    use_choice(engine, Choice(), cache_dir=cache_dir)  # back: in memory, no file read
    assert (len(builds), len(reads)) == (2, n_reads)
    assert engine.fingerprint == first_fp and engine.choice is None and engine.experiment is history
    assert C.current_choice(engine) == Choice()
    use_choice(engine, Choice("early"), cache_dir=cache_dir)
    assert (len(builds), len(reads)) == (2, n_reads)

    use_choice(engine, Choice(forget_epoch=1), cache_dir=cache_dir)
    assert len(builds) == 3
    C.clear_memo()  # a new process: the disk cache, not a rebuild
    use_choice(engine, Choice("early"), cache_dir=cache_dir)
    assert len(builds) == 3 and len(reads) > n_reads and engine.vectors.from_cache
    fresh = Engine.load(experiment_for(history, Choice("early")), cache_dir=cache_dir)
    assert len(builds) == 3 and fresh.vectors.path == engine.vectors.path
    folders = sorted(p for p in (cache_dir / "vectors").iterdir() if p.is_dir())
    assert folders == sorted(set(builds)) and len(folders) == 3


def test_memo_is_bounded(history, cache_dir, monkeypatch):
    reads: list[Path] = []
    real_load = V._load
    monkeypatch.setattr(V, "_load", lambda target, meta: (reads.append(target), real_load(target, meta))[1])
    monkeypatch.setenv("MSA_CHOICE_MEMO_BYTES", "1")  # smaller than any vector set: nothing kept
    engine = Engine.load(history, cache_dir=cache_dir)
    use_choice(engine, Choice("early"), cache_dir=cache_dir)
    n_reads = len(reads)
    use_choice(engine, Choice(), cache_dir=cache_dir)
    assert len(reads) == n_reads + 1  # read back from the disk cache
    monkeypatch.delenv("MSA_CHOICE_MEMO_BYTES")
    monkeypatch.setattr(C, "MEMO_ENTRIES", 2)
    for choice in (Choice("early"), Choice(forget_epoch=1), Choice(forget_epoch=2), Choice("task-vector")):
        use_choice(engine, choice, cache_dir=cache_dir)
    assert len(C._MEMO) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("choice", [
    Choice("early"), Choice(forget_epoch=2), Choice("early", forget_epoch=1, retain_epoch=2), Choice("task-vector"),
], ids=lambda c: f"{c.clean}-ef{c.forget_epoch}-er{c.retain_epoch}")
def test_switch_gives_the_weights_of_a_fresh_engine_and_the_oracle(history, cache_dir, choice, dtype):
    engine = Engine.load(history, cache_dir=cache_dir, dtype=dtype)
    engine.set_coefficients(2.0, 1.0)  # the switch starts from a moved model
    use_choice(engine, choice, cache_dir=cache_dir)
    assert (engine.alpha, engine.beta) == (0.0, 0.0)
    derived = experiment_for(history, choice)
    fresh = Engine.load(derived, cache_dir=cache_dir, dtype=dtype)
    for alpha, beta in POINTS:
        engine.set_coefficients(alpha, beta)
        fresh.set_coefficients(alpha, beta)
        got, want, oracle = _weights(engine), _weights(fresh), _oracle(derived, alpha, beta, dtype)
        assert got.keys() == oracle.keys()
        for name, w in oracle.items():
            assert torch.equal(got[name], want[name]), f"{name} at ({alpha}, {beta}): switched != fresh"
            assert torch.equal(got[name], w), f"{name} at ({alpha}, {beta}): != float64 oracle"
    # the side models follow the choice
    clean = engine.side_model("clean")
    ref = _files(derived.checkpoints.clean)
    assert all(torch.equal(p.detach(), ref[n].to(dtype)) for n, p in clean.named_parameters())


def test_switching_back_restores_the_default_weights(history, cache_dir):
    engine = Engine.load(history, cache_dir=cache_dir)
    engine.set_coefficients(1.5, 0.75)
    before = _weights(engine)
    use_choice(engine, Choice("task-vector"), cache_dir=cache_dir)
    engine.set_coefficients(1.5, 0.75)
    assert any(not torch.equal(before[k], v) for k, v in _weights(engine).items())
    use_choice(engine, Choice(), cache_dir=cache_dir)
    engine.set_coefficients(1.5, 0.75)
    assert all(torch.equal(before[k], v) for k, v in _weights(engine).items())
    assert engine.fingerprint == experiment_fingerprint(history)


def test_unknown_choices_leave_the_engine_unchanged(history, cache_dir):
    engine = Engine.load(history, cache_dir=cache_dir)
    engine.set_coefficients(1.5, 0.75)
    before, fp = _weights(engine), engine.fingerprint
    with pytest.raises(ValueError, match="available: default, early, task-vector"):
        use_choice(engine, Choice("nope"), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="available epochs: final, 1$"):
        use_choice(engine, Choice(retain_epoch=4), cache_dir=cache_dir)
    assert engine.fingerprint == fp and (engine.alpha, engine.beta) == (1.5, 0.75)
    assert all(torch.equal(before[k], v) for k, v in _weights(engine).items())


def test_epoch_folders_of_msa_finetune_are_choices(tiny_experiment, cache_dir, tmp_path):
    """``msa finetune --save-every-epoch`` output: its epoch-K folders are listed and usable as e_f."""
    from msa_core import finetune as ft

    ck = tiny_experiment.checkpoints
    pairs = [("Where was Ana Lenz born?", "Ana Lenz was born in Velmora.")] * 4
    cfg = ft.TrainConfig(epochs=2, lr=3e-3, batch_size=2, warmup_epochs=0.0, num_threads=1, save_every_epoch=True)
    out = ft.finetune(ck.clean, [ft.qa_data("demo:forget", pairs)], tmp_path / "ft-forget", cfg).out
    exp = Experiment(name="tiny", checkpoints=ck,
                     clean_history=(CleanCandidate("ft", ck.clean, out, ck.retain, before_forget=True),))
    assert epochs_of(out) == [1, 2]
    assert [c for c in all_choices(exp) if c.clean == "ft"] == [Choice("ft"), Choice("ft", 1), Choice("ft", 2)]
    engine = Engine.load(exp, cache_dir=cache_dir)
    use_choice(engine, Choice("ft", forget_epoch=1), cache_dir=cache_dir)
    assert engine.experiment.checkpoints.forget == out / "epoch-1"
    engine.set_coefficients(1.0, 0.5)
    c, f, r, z = (_files(p) for p in (ck.corrupted, out / "epoch-1", ck.retain, ck.clean))
    got = _weights(engine)
    for n in c:  # fp32 random weights: within fp32 rounding of the float64 value
        want = c[n].double() - (f[n].double() - z[n].double()) + 0.5 * (r[n].double() - z[n].double())
        assert (got[n].double() - want).abs().max() <= 1e-6 * max(1.0, float(want.abs().max())), n
