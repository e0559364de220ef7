"""The memory planner (msa_core.plan) and ``msa plan``: parameter counts and bytes per option against
hand-computed values, the planner against a loaded engine, refuse-and-suggest, device maps."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from app_fixtures import _navigation_mode  # noqa: F401
from transformers import LlamaConfig

from msa_core.cli import main
from msa_core.experiment import load_experiment
from msa_core.plan import (
    HEADROOM_FRACTION,
    UNPLACED,
    PlanOptions,
    assign_devices,
    experiment_shape,
    parse_devices,
    parse_size,
    plan_for_experiment,
    plan_memory,
    plan_table,
    shape_from_checkpoint,
    shape_from_config,
)

GiB = 2**30
VOCAB = 128256
ONE_80 = {"cuda:0": 80 * GiB}


def llama(hidden: int, layers: int, inter: int, heads: int, kv: int, tie: bool) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                       num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tie,
                       max_position_embeddings=131072, dtype="bfloat16")


def hand_count(hidden: int, layers: int, inter: int, heads: int, kv: int, tie: bool) -> int:
    """Llama parameters from the formulas: embeddings, per layer q/k/v/o + 3 MLP matrices + 2 norms,
    the final norm, and lm_head unless tied."""
    head_dim = hidden // heads
    q = o = hidden * hidden
    k = v = hidden * kv * head_dim
    mlp = 3 * hidden * inter
    norms = 2 * hidden
    embed = VOCAB * hidden
    return embed + layers * (q + k + v + o + mlp + norms) + hidden + (0 if tie else VOCAB * hidden)


SHAPES = {  # Llama-3.2-1B, Llama-3.1-8B, Llama-3.1-70B
    "1b": (2048, 16, 8192, 32, 8, True),
    "8b": (4096, 32, 14336, 32, 8, False),
    "70b": (8192, 80, 28672, 64, 8, False),
}


@pytest.fixture(scope="module")
def shapes():
    return {name: shape_from_config(llama(*dims), source=name) for name, dims in SHAPES.items()}


def test_parameter_counts_of_the_1b_8b_and_70b_shapes_match_the_formulas(shapes):
    assert hand_count(*SHAPES["1b"]) == 1_235_814_400  # the published Llama-3.2-1B count
    assert hand_count(*SHAPES["8b"]) == 8_030_261_248  # the published Llama-3.1-8B count
    for name, dims in SHAPES.items():
        assert shapes[name].parameter_count == hand_count(*dims)
        assert shapes[name].stored_dtype == "bfloat16"


def generation_bytes(hidden, layers, inter, heads, kv, tie, *, dtype_bytes=2, tokens=2048):
    """KV cache + one layer's activations + logits for one sequence (the planner's stated rule)."""
    kv_per_token = 2 * layers * kv * (hidden // heads) * dtype_bytes
    return tokens * (kv_per_token + (4 * hidden + 3 * inter + VOCAB) * dtype_bytes)


@pytest.mark.parametrize("name", ["1b", "8b"])
@pytest.mark.parametrize("model_dtype,vector_dtype,sides", [
    ("bfloat16", "float32", "cached"), ("bfloat16", "bfloat16", "cached"),
    ("bfloat16", "bfloat16", "device"), ("float32", "float32", "device"),
])
def test_bytes_per_option_on_one_device_match_hand_computed_values(shapes, name, model_dtype, vector_dtype, sides):
    n = hand_count(*SHAPES[name])
    m = 4 if model_dtype == "float32" else 2
    v = 4 if vector_dtype == "float32" else 2
    plan = plan_memory(shapes[name], PlanOptions(model_dtype, vector_dtype, sides), {"cuda:0": 1000 * GiB})
    (row,) = plan.rows
    assert row.working_model == n * m
    assert row.theta_c == n * 2  # stored bf16: the pristine copy keeps the stored dtype, whatever the model's
    assert row.vectors == 2 * n * v
    assert row.side_models == (2 * n * m if sides == "device" else 0)
    tensors = n * m + n * 2 + 2 * n * v + row.side_models
    assert row.headroom == int(HEADROOM_FRACTION * tensors) + generation_bytes(*SHAPES[name], dtype_bytes=m)
    assert row.total == tensors + row.headroom and plan.fits


def test_8b_with_fp32_vectors_on_one_80gb_card_is_refused_and_bf16_vectors_suggested(shapes):
    n = hand_count(*SHAPES["8b"])
    plan = plan_memory(shapes["8b"], PlanOptions("bfloat16", "float32"), ONE_80)
    need = int((2 + 2 + 8) * n * (1 + HEADROOM_FRACTION)) + generation_bytes(*SHAPES["8b"])
    assert not plan.fits
    assert plan.shortfall_bytes == need - 80 * GiB
    assert "bf16 vectors" in plan.suggestion
    fixed = plan_memory(shapes["8b"], PlanOptions("bfloat16", "bfloat16"), ONE_80)
    assert fixed.fits and fixed.rows[0].total == int(8 * n * (1 + HEADROOM_FRACTION)) + generation_bytes(*SHAPES["8b"])


def test_8b_with_side_models_on_the_device_suggests_the_disk_cache(shapes):
    plan = plan_memory(shapes["8b"], PlanOptions("bfloat16", "bfloat16", "device"), ONE_80)
    assert not plan.fits and "disk cache" in plan.suggestion


def test_70b_on_one_80gb_card_needs_device_map_auto_over_8(shapes):
    n = hand_count(*SHAPES["70b"])
    plan = plan_memory(shapes["70b"], PlanOptions("bfloat16", "bfloat16"), ONE_80)
    assert not plan.fits
    assert plan.rows[0].total > 7 * 80 * GiB  # 8 B per parameter + 10%: more than 7 cards hold
    assert "8 × 80.0 GiB" in plan.suggestion and "device_map auto" in plan.suggestion
    eight = plan_memory(shapes["70b"], PlanOptions("bfloat16", "bfloat16", device_map="auto"),
                        parse_devices("8x80GiB"))
    assert eight.fits and len(eight.rows) == 8
    assert sum(r.working_model for r in eight.rows) == 2 * n
    assert sum(r.vectors for r in eight.rows) == 4 * n
    seven = plan_memory(shapes["70b"], PlanOptions("bfloat16", "bfloat16", device_map="auto"),
                        parse_devices("7x80GiB"), suggest=False)
    assert not seven.fits and any(r.device == UNPLACED for r in seven.rows)


def test_device_map_auto_keeps_each_decoder_layer_on_one_device(shapes):
    opts = PlanOptions("bfloat16", "bfloat16", device_map="auto")
    where = assign_devices(shapes["8b"], opts, parse_devices("2x48GiB"))
    by_layer: dict[str, set[str]] = {}
    for name, dev in where.items():
        if ".layers." in name:
            by_layer.setdefault(name.split(".layers.")[1].split(".")[0], set()).add(dev)
    assert len(by_layer) == 32 and all(len(d) == 1 for d in by_layer.values())
    assert set(where.values()) == {"cuda:0", "cuda:1"}
    plan = plan_memory(shapes["8b"], opts, parse_devices("2x48GiB"))
    assert plan.fits and all(r.total <= 48 * GiB for r in plan.rows)


def test_an_explicit_device_map_places_modules_by_prefix(shapes):
    shape = shapes["1b"]
    dm = {"model.embed_tokens": "cuda:0", "model.layers": "cuda:1", "model.norm": "cuda:1", "lm_head": "cuda:0"}
    plan = plan_memory(shape, PlanOptions("bfloat16", "bfloat16", device_map=dm), parse_devices("2x80GiB"))
    rows = {r.device: r for r in plan.rows}
    assert rows["cuda:0"].working_model == 2 * VOCAB * 2048  # tied: the one embedding matrix
    assert rows["cuda:0"].working_model + rows["cuda:1"].working_model == 2 * hand_count(*SHAPES["1b"])
    with pytest.raises(ValueError, match="model.norm.weight"):
        assign_devices(shape, PlanOptions(device_map={"model.layers": "cuda:0", "model.embed_tokens": "cuda:0"}),
                       ONE_80)


def test_the_quick_demo_plan_counts_the_checkpoints_parameters(quick_demo):
    from msa_core.checkpoints import load_model, read_tensor_index

    exp = load_experiment(quick_demo)
    shape = experiment_shape(exp)
    model = load_model(exp.checkpoints.corrupted)
    n = sum(p.numel() for p in model.parameters())  # tied weights once
    assert shape.parameter_count == n
    stored = {d for d, _s in read_tensor_index(exp.checkpoints.corrupted).values()}
    assert stored == {"float32"} and shape.stored_dtype == "float32"
    plan = plan_for_experiment(exp, device="cpu", dtype="bfloat16", devices={"cpu": 64 * GiB})
    (row,) = plan.rows
    assert (row.working_model, row.theta_c, row.vectors) == (2 * n, 4 * n, 8 * n)  # fp32 θ_c kept at 4 B
    assert plan.side_model_count == 2 and plan.fits


@pytest.mark.parametrize("tied", [False, True])
def test_the_plan_matches_the_bytes_a_loaded_engine_holds(tmp_path, tied):
    from tiny import make_checkpoints

    from msa_core.engine import Engine

    exp = make_checkpoints(tmp_path / "ckpt", tie=tied, seed=3)
    engine = Engine.load(exp, device="cpu", dtype="bfloat16", cache_dir=tmp_path / "cache")
    engine.side_model("clean")
    engine.side_model("reference")
    mem = engine.memory_bytes()
    plan = plan_memory(experiment_shape(exp), PlanOptions("bfloat16", "float32", "device"), {"cpu": 64 * GiB})
    (row,) = plan.rows
    assert plan.parameter_count == engine.parameter_count
    assert row.working_model == mem["working_model"]
    assert row.theta_c == mem["pristine"]
    assert row.vectors == mem["vectors"]
    assert row.side_models == mem["side:clean"] + mem["side:reference"]


def test_a_checkpoint_that_contradicts_its_config_is_refused_by_tensor(tmp_path):
    from tiny import make_checkpoints

    exp = make_checkpoints(tmp_path / "ckpt")
    cfg_path = exp.checkpoints.corrupted / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"lack tensor model\.layers\.2\."):
        shape_from_checkpoint(exp.checkpoints.corrupted)
    cfg["num_hidden_layers"], cfg["intermediate_size"] = 2, 80
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight is stored with shape"):
        shape_from_checkpoint(exp.checkpoints.corrupted)


def test_device_capacities_parse_units_and_counts():
    assert parse_size("80GiB") == 80 * GiB
    assert parse_size("80 GB") == 80 * 10**9
    assert parse_size("1.5TiB") == int(1.5 * 2**40)
    assert parse_devices("cuda:0=80GiB, cuda:1=40GiB") == {"cuda:0": 80 * GiB, "cuda:1": 40 * GiB}
    assert parse_devices("4x80GiB") == {f"cuda:{i}": 80 * GiB for i in range(4)}
    for bad, match in (("cuda:0", "DEVICE=SIZE"), ("gpu0=80GiB", "cpu or cuda:N"), ("cuda:0=lots", "size like"),
                       ("cuda:0=1GiB,cuda:0=2GiB", "twice")):
        with pytest.raises(ValueError, match=match):
            parse_devices(bad)


def test_the_option_table_has_one_row_per_combination(shapes):
    table = plan_table(shapes["1b"], parse_devices("2x24GiB"))
    combos = {(p.options.dtype, p.options.vector_dtype, p.options.side_models, p.options.device_map) for p in table}
    assert len(table) == len(combos) == 2 * 2 * 2 * 2
    totals = {(p.options.dtype, p.options.vector_dtype, p.options.side_models): p.total_bytes
              for p in table if p.options.device_map is None}
    assert totals[("float32", "float32", "device")] > totals[("bfloat16", "bfloat16", "cached")]


def write_8b_config(path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": VOCAB, "tie_word_embeddings": False,
           "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
    path.write_text(json.dumps(cfg))
    return path


def test_cli_refuses_an_8b_plan_with_fp32_vectors_and_names_the_fix(tmp_path, capsys):
    cfg = write_8b_config(tmp_path / "llama-8b.json")
    rc = main(["plan", "--config", str(cfg), "--devices", "cuda:0=80GiB", "--dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "8,030,261,248 parameters" in out
    assert "does not fit" in err and "GiB short" in err and "--vector-dtype bfloat16" in err
    rc = main(["plan", "--config", str(cfg), "--devices", "cuda:0=80GiB", "--vector-dtype", "bfloat16",
               "--json", "-"])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0 and payload["chosen"]["fits"]
    assert payload["parameter_count"] == 8_030_261_248
    assert payload["chosen"]["rows"][0]["tau_f_tau_r"] == 4 * 8_030_261_248
    assert len(payload["options"]) == 8  # bf16 only: 2 vector dtypes × 2 side modes × 1 device map (one device)


def test_cli_plans_an_experiment_from_its_checkpoint_headers(tiny_experiment, capsys):
    exp_file = tiny_experiment.checkpoints.corrupted.parent / "experiment.yaml"
    rc = main(["plan", str(exp_file), "--devices", "cpu=8GiB", "--dtype", "float32", "--json", "-"])
    payload = json.loads(capsys.readouterr().out)
    n = payload["parameter_count"]
    row = payload["chosen"]["rows"][0]
    assert rc == 0 and row["device"] == "cpu"
    assert (row["working_model"], row["theta_c"], row["tau_f_tau_r"], row["side_models"]) == (4 * n, 4 * n, 8 * n, 0)
    with pytest.raises(SystemExit):
        main(["plan", str(exp_file), "--side-models", "nowhere"])
    assert main(["plan"]) == 2
    assert "experiment file or --config" in capsys.readouterr().err


def test_bf16_stored_checkpoint_in_an_fp32_model_keeps_theta_c_at_2_bytes(tiny_experiment_bf16):
    plan = plan_memory(experiment_shape(tiny_experiment_bf16), PlanOptions("float32", "float32"), {"cpu": GiB})
    (row,) = plan.rows
    n = plan.parameter_count
    assert row.theta_c == 2 * n and row.working_model == 4 * n


def test_the_experiment_page_shows_the_plan_before_loading(tiny_yaml):
    from app_fixtures import new_app, no_exceptions

    at = new_app().run()
    at.text_input(key="w_page_exp_path").set_value(str(tiny_yaml)).run()
    no_exceptions(at)
    assert at.session_state["msa_exp_path"] is None  # nothing loaded yet
    (table,) = [d.value for d in at.dataframe if "θ_c" in d.value.columns]
    n = experiment_shape(load_experiment(tiny_yaml)).parameter_count
    assert list(table["device"]) == ["cpu"] and list(table["fits"]) == ["yes"]
    assert table["τ_f + τ_r"][0] == f"{8 * n / 2**10:.1f} KiB"  # fp32 vectors of a ~38k-parameter model
    assert any("Memory plan for" in c.value and "fits" in c.value for c in at.caption)


def test_the_experiment_page_warns_with_the_suggestion_when_the_plan_does_not_fit(tiny_yaml, monkeypatch):
    from app_fixtures import new_app, no_exceptions

    import msa_core.plan

    monkeypatch.setattr(msa_core.plan, "machine_devices", lambda: {"cpu": 400 * 2**10})  # a 400 KiB machine
    at = new_app().run()
    at.session_state["msa_dtype"] = "float16"  # a dtype no other test plans with: not a cached plan
    at.text_input(key="w_page_exp_path").set_value(str(tiny_yaml)).run()
    no_exceptions(at)
    (table,) = [d.value for d in at.dataframe if "θ_c" in d.value.columns]
    assert list(table["fits"]) == ["no"]
    assert any("bf16 vectors" in w.value for w in at.warning)


def test_engine_max_memory_leaves_room_for_theta_c_and_the_vectors_beside_each_layer():
    from msa_core.plan import engine_max_memory

    opts = PlanOptions("bfloat16", "bfloat16", "cached")
    got = engine_max_memory({"cuda:0": 80 * GiB, "cuda:1": 40 * GiB, "cpu": 100 * GiB}, opts, stored_dtype="bfloat16")
    # model 2 B of the engine's 2 + 2 + 4 = 8 B per parameter, after 10% headroom
    assert got == {0: int(80 * GiB / 1.1 * 2 / 8), 1: int(40 * GiB / 1.1 * 2 / 8), "cpu": int(100 * GiB / 1.1 * 2 / 8)}
    fp32_ckpt = engine_max_memory({"cuda:0": 80 * GiB}, replace(opts, side_models="device"),
                                  stored_dtype="float32", side_models=2)
    assert fp32_ckpt == {0: int(80 * GiB / 1.1 * 2 / (2 + 4 + 4 + 2 * 2))}  # θ_c kept in fp32, two side models


def test_bf16_vectors_chosen_on_the_experiment_page_halve_the_plan_and_the_loaded_vectors(app_env, tmp_path):
    """The Experiment page's Vectors select: the plan before loading counts bf16 vectors (half of
    fp32), and the engine the app then loads stores τ_f, τ_r in bf16; Placement offers 'auto'
    only on a machine with several GPUs."""
    import torch
    from app_fixtures import load_experiment as load_in_app
    from app_fixtures import make_tiny_app_experiment, new_app, no_exceptions

    from studio import resources

    path = make_tiny_app_experiment(tmp_path / "vec")
    at = new_app().run()
    assert at.selectbox(key="w_msa_vector_dtype").options == ["float32", "bfloat16"]
    assert at.selectbox(key="w_msa_placement").options == ["one device"]  # this CPU machine
    at.selectbox(key="w_msa_vector_dtype").set_value("bfloat16").run()
    at.text_input(key="w_page_exp_path").set_value(str(path)).run()
    no_exceptions(at)
    (table,) = [d.value for d in at.dataframe if "θ_c" in d.value.columns]
    n = experiment_shape(load_experiment(path)).parameter_count
    assert table["τ_f + τ_r"][0] == f"{4 * n / 2**10:.1f} KiB"
    assert any("bfloat16 vectors" in c.value for c in at.caption)
    load_in_app(at, path)
    resolved = path.resolve()
    engine = resources._engine_slot(str(resolved), resolved.stat().st_mtime_ns, "auto", "auto", "bfloat16",
                                    "one device").engine
    assert engine is not None and engine.vector_dtype == torch.bfloat16
    assert {t.dtype for t in engine.vectors.forget.values()} == {torch.bfloat16}


def test_default_max_memory_leaves_room_on_each_gpu_and_is_none_without_one(tiny_yaml):
    """A device-map strategy without --max-memory: accelerate gets each GPU's share for the model
    alone (engine_max_memory: θ_c and the vectors beside it); on a CPU-only machine, nothing."""
    from msa_core.plan import default_max_memory

    exp = load_experiment(tiny_yaml)
    assert default_max_memory(exp, devices={"cpu": 64 * GiB}) is None
    got = default_max_memory(exp, vector_dtype="bfloat16", dtype="bfloat16",
                             devices={"cuda:0": 80 * GiB, "cuda:1": 40 * GiB, "cpu": 64 * GiB})
    theta_c = {"float32": 4, "bfloat16": 2}[experiment_shape(exp).stored_dtype]
    share = 2 / (2 + theta_c + 2 * 2)  # the bf16 model's bytes of model + θ_c as stored + bf16 τ_f, τ_r
    assert got == {0: int(80 * GiB / (1 + HEADROOM_FRACTION) * share),
                   1: int(40 * GiB / (1 + HEADROOM_FRACTION) * share)}


def test_plan_for_experiment_with_device_map_auto_spreads_over_every_device(tiny_yaml):
    """The Experiment page's Placement 'auto': the plan spans all given devices and counts every
    parameter once; one device (the default) plans only the first."""
    exp = load_experiment(tiny_yaml)
    devices = {"cuda:0": 80 * GiB, "cuda:1": 80 * GiB}
    spread = plan_for_experiment(exp, dtype="bfloat16", devices=devices, device_map="auto")
    one = plan_for_experiment(exp, dtype="bfloat16", devices=devices)
    assert spread.options.device_map == "auto" and one.options.device_map is None
    assert [r.device for r in one.rows] == ["cuda:0"]
    assert {r.device for r in spread.rows} <= set(devices)
    n = experiment_shape(exp).parameter_count
    assert sum(r.working_model for r in spread.rows) == sum(r.working_model for r in one.rows) == 2 * n
