"""Forget/retain vectors: values, cache hit, invalidation, corruption recovery, NaN/Inf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_core.vectors import compute_vectors, layer_norms


def _files(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


def test_vectors_equal_fp32_differences(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    c, f, r = (_files(getattr(tiny_experiment.checkpoints, k)) for k in ("clean", "forget", "retain"))
    assert set(vs.forget) == set(c)
    for n in c:
        assert torch.equal(vs.forget[n], f[n].float() - c[n].float())
        assert torch.equal(vs.retain[n], r[n].float() - c[n].float())
        assert vs.forget[n].dtype == torch.float32
        assert vs.norms[n]["forget"] == pytest.approx(float((f[n] - c[n]).norm()), rel=1e-5)


def test_bf16_vectors_computed_in_fp32(tiny_experiment_bf16, cache_dir):
    vs = compute_vectors(tiny_experiment_bf16, cache_dir)
    c, f = (_files(getattr(tiny_experiment_bf16.checkpoints, k)) for k in ("clean", "forget"))
    n = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(vs.forget[n], f[n].float() - c[n].float())
    # bf16 subtraction (what the reference script does) loses precision:
    assert not torch.equal(vs.forget[n], (f[n] - c[n]).float())


def test_second_run_hits_cache(tiny_experiment, cache_dir):
    first = compute_vectors(tiny_experiment, cache_dir)
    second = compute_vectors(tiny_experiment, cache_dir)
    assert not first.from_cache and second.from_cache and first.path == second.path
    for n in first.forget:
        assert torch.equal(first.forget[n], second.forget[n])


def test_changed_inputs_invalidate(tiny_experiment, cache_dir):
    first = compute_vectors(tiny_experiment, cache_dir)
    f = next(tiny_experiment.checkpoints.forget.glob("*.safetensors"))
    sd = load_file(str(f))
    sd = {k: v + 0.5 for k, v in sd.items()}
    save_file(sd, str(f), metadata={"format": "pt"})
    second = compute_vectors(tiny_experiment, cache_dir)
    assert second.fingerprint != first.fingerprint and not second.from_cache
    n = next(iter(sd))
    assert not torch.equal(first.forget[n], second.forget[n])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_cache_is_rebuilt(tiny_experiment, cache_dir, damage):
    first = compute_vectors(tiny_experiment, cache_dir)
    target = first.path / "retain.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-5] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (first.path / "meta.json").write_text("{not json")
    second = compute_vectors(tiny_experiment, cache_dir)
    assert not second.from_cache
    for n in first.retain:
        assert torch.equal(first.retain[n], second.retain[n])
    assert compute_vectors(tiny_experiment, cache_dir).from_cache


def test_nan_in_vector_named(tiny_experiment, cache_dir):
    f = next(tiny_experiment.checkpoints.forget.glob("*.safetensors"))
    sd = load_file(str(f))
    sd["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})
    folder = str(tiny_experiment.checkpoints.forget)
    nan_in = rf"forget checkpoint {folder}: tensor model\.layers\.0\.self_attn\.q_proj\.weight has NaN/Inf"
    with pytest.raises(ValueError, match=nan_in):
        compute_vectors(tiny_experiment, cache_dir)
    # nothing half-written is left that could be mistaken for a cache
    assert not any(p.name.endswith(".tmp") for p in (cache_dir / "vectors").iterdir())


def test_cache_meta_records_inputs(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    meta = json.loads((vs.path / "meta.json").read_text())
    assert meta["inputs"]["clean"] == str(tiny_experiment.checkpoints.clean)
    assert meta["dtype"] == "float32" and meta["num_tensors"] == len(vs.forget)


def test_layer_norms_match_the_concatenated_tensors():
    g = torch.Generator().manual_seed(0)
    tensors = {name: (torch.randn(shape, generator=g), torch.randn(shape, generator=g))
               for name, shape in (("model.embed_tokens.weight", (7, 4)), ("model.layers.0.mlp.w", (4, 4)),
                                   ("model.layers.0.attn.q", (4, 3)), ("model.layers.1.mlp.w", (4, 4)),
                                   ("lm_head.weight", (7, 4)))}
    norms = {n: {"forget": float(f.norm()), "retain": float(r.norm()),
                 "cosine": float(torch.dot(f.flatten(), r.flatten()) / (f.norm() * r.norm()))}
             for n, (f, r) in tensors.items()}
    rows = {row.layer: row for row in layer_norms(norms)}
    assert [row.layer for row in layer_norms(norms)] == ["embed", "L0", "L1", "head"]
    assert rows["L0"].tensors == 2 and rows["L1"].tensors == 1 and rows["head"].tensors == 1
    f0 = torch.cat([tensors[n][0].flatten() for n in ("model.layers.0.mlp.w", "model.layers.0.attn.q")])
    r0 = torch.cat([tensors[n][1].flatten() for n in ("model.layers.0.mlp.w", "model.layers.0.attn.q")])
    assert rows["L0"].forget == pytest.approx(float(f0.norm()), rel=1e-5)
    assert rows["L0"].retain == pytest.approx(float(r0.norm()), rel=1e-5)
    assert rows["L0"].cosine == pytest.approx(float(torch.dot(f0, r0) / (f0.norm() * r0.norm())), abs=1e-5)
    assert layer_norms({"model.layers.3.w": {"forget": 0.0, "retain": 2.0, "cosine": 0.0}})[0].cosine == 0.0


def test_layer_norms_order_layers_numerically(tiny_experiment, cache_dir):
    names = [f"model.layers.{i}.w" for i in (10, 2, 1)]
    rows = layer_norms({n: {"forget": 1.0, "retain": 1.0, "cosine": 1.0} for n in names})
    assert [r.layer for r in rows] == ["L1", "L2", "L10"]
    vs = compute_vectors(tiny_experiment, cache_dir)
    assert sum(r.tensors for r in layer_norms(vs.norms)) == len(vs.forget)


def test_a_rebuild_leaves_no_temp_folder(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    (vs.path / "meta.json").write_text("{broken")
    again = compute_vectors(tiny_experiment, cache_dir)
    assert not again.from_cache and json.loads((again.path / "meta.json").read_text())["fingerprint"] == vs.fingerprint
    assert sorted(p.name for p in vs.path.parent.iterdir()) == [vs.path.name, f"{vs.path.name}.lock"]



# ---------------------------------------------------------------- issue 16


def test_nan_in_clean_checkpoint_names_the_clean_checkpoint(tiny_experiment, cache_dir):
    f = next(tiny_experiment.checkpoints.clean.glob("*.safetensors"))
    sd = load_file(str(f))
    sd["model.layers.1.mlp.down_proj.weight"][3, 1] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})
    folder = str(tiny_experiment.checkpoints.clean)
    name = r"model\.layers\.1\.mlp\.down_proj\.weight"
    with pytest.raises(ValueError, match=rf"^clean checkpoint {folder}: tensor {name} has NaN/Inf values$"):
        compute_vectors(tiny_experiment, cache_dir)


def test_a_difference_that_overflows_is_named(tiny_experiment, cache_dir):
    for role, value in (("clean", -3e38), ("retain", 3e38)):
        f = next(getattr(tiny_experiment.checkpoints, role).glob("*.safetensors"))
        sd = load_file(str(f))
        sd["lm_head.weight"][0, 0] = value
        save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"retain vector tensor lm_head\.weight overflows float32"):
        compute_vectors(tiny_experiment, cache_dir)


def _edit_meta(path: Path, how: str) -> None:
    meta = json.loads((path / "meta.json").read_text())
    if how == "list":
        meta = [meta]
    elif how == "number":
        meta = 42
    elif how == "string":
        meta = "meta"
    elif how == "files-list":
        meta["files"] = [meta["files"]]
    elif how == "size-string":
        meta["files"]["retain"]["size"] = str(meta["files"]["retain"]["size"])
    elif how == "sha-number":
        meta["files"]["forget"]["sha256"] = 7
    elif how == "norms-list":
        meta["norms"] = []
    elif how == "num-tensors-null":
        meta["num_tensors"] = None
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "how", ["list", "number", "string", "files-list", "size-string", "sha-number", "norms-list", "num-tensors-null"]
)
def test_meta_json_of_the_wrong_shape_is_rebuilt(tiny_experiment, cache_dir, how):
    first = compute_vectors(tiny_experiment, cache_dir)
    _edit_meta(first.path, how)
    second = compute_vectors(tiny_experiment, cache_dir)
    assert not second.from_cache
    for n in first.forget:
        assert torch.equal(first.forget[n], second.forget[n])
    third = compute_vectors(tiny_experiment, cache_dir)
    assert third.from_cache and third.norms == first.norms


def test_leftover_temp_folders_of_a_killed_build_are_removed_by_the_next_build(tiny_experiment, cache_dir):
    from msa_core.vectors import vectors_fingerprint

    fp = vectors_fingerprint(tiny_experiment)
    stale = cache_dir / "vectors" / f".{fp}.abc123.tmp"
    (stale / "partial").mkdir(parents=True)
    other = cache_dir / "vectors" / ".0123456789abcdef.xyz.tmp"  # another fingerprint's: not ours to judge
    other.mkdir()
    compute_vectors(tiny_experiment, cache_dir)
    assert not stale.exists() and other.exists()


def _load_in_process(exp_file: str, cache: str, barrier, queue) -> None:
    from msa_core.experiment import load_experiment

    barrier.wait()
    try:
        vs = compute_vectors(load_experiment(exp_file), Path(cache))
        queue.put(("ok", vs.from_cache, sorted((n, float(t.double().sum())) for n, t in vs.forget.items())))
    except Exception as exc:  # noqa: BLE001 - the test reports whatever a child raised
        queue.put(("error", f"{type(exc).__name__}: {exc}", None))


def test_processes_finding_the_same_corrupt_cache_all_succeed(tiny_experiment, cache_dir):
    import multiprocessing as mp

    first = compute_vectors(tiny_experiment, cache_dir)
    want = sorted((n, float(t.double().sum())) for n, t in first.forget.items())
    (first.path / "meta.json").write_text("[]")
    (first.path / "retain.safetensors").write_bytes(b"junk")
    ctx = mp.get_context("fork")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    exp_file = str(tiny_experiment.checkpoints.clean.parent / "experiment.yaml")
    procs = [ctx.Process(target=_load_in_process, args=(exp_file, str(cache_dir), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok"] * n, [r[1] for r in results if r[0] != "ok"]
    assert all(r[2] == want for r in results)
    assert sum(1 for r in results if not r[1]) == 1  # exactly one process rebuilt; the others loaded its cache
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name, f"{first.path.name}.lock"]
