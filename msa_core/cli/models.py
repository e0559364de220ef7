"""``msa demo``, ``msa vectors``, ``msa compose`` and ``msa generate``: build, inspect and use models.

Each command validates its arguments, calls one library function and prints (see
:mod:`msa_core.cli.output` for the ``--json`` rule).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.cli.output import add_output_args, emit, note, progress_for
from msa_core.experiment import Experiment, load_experiment
from msa_core.threads import ThreadChoice, apply_threads, choose_threads, env_threads, parse_threads

if TYPE_CHECKING:
    from msa_core.engine import Engine, ModuleFilter


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The experiment and how its engine is loaded (device or device map, dtypes, which parameters move)."""
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--device", default=None,
                        help="cpu / cuda / cuda:N, checked against this machine (default: cuda if available)")
    parser.add_argument("--dtype", default=None,
                        help="float32 / bfloat16 / float16 (default: checkpoint's; bf16 on GPU)")
    parser.add_argument("--vector-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="how τ_f, τ_r are stored on the device: float32 (default) or bfloat16 (half the memory; "
                             "the compose still computes in float32; results are stored apart)")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="load through accelerate: auto | a device (cuda:0) | a JSON object or .json file mapping "
                             "module names to devices (e.g. '{\"model.layers.0\": 0, \"lm_head\": 1}'); "
                             "instead of --device. Disk offload is refused")
    parser.add_argument("--max-memory", default=None, metavar="SIZES",
                        help="memory per device for --device-map auto, e.g. cuda:0=70GiB,cuda:1=70GiB,cpu=100GiB")
    parser.add_argument("--only", default=None, help="apply α/β only to parameters matching this regex (e.g. mlp)")
    parser.add_argument("--layers", default=None, help="apply α/β only to this layer range, e.g. 0-7")
    add_choice_args(parser)


def add_choice_args(parser: argparse.ArgumentParser) -> None:
    """--clean / --forget-epoch / --retain-epoch: the θ_clean and epoch choice (msa_core.choices)."""
    parser.add_argument("--clean", default=None, metavar="LABEL",
                        help="θ_clean candidate from the experiment's clean_history (default: its checkpoints)")
    parser.add_argument("--forget-epoch", type=int, default=None, metavar="N",
                        help="use epoch N of the forget fine-tune (msa finetune --save-every-epoch; default: final)")
    parser.add_argument("--retain-epoch", type=int, default=None, metavar="N",
                        help="use epoch N of the retain fine-tune (default: final)")


def add_point_args(parser: argparse.ArgumentParser) -> None:
    """``--alpha`` (required) and ``--beta`` (default 0)."""
    parser.add_argument("--alpha", type=float, required=True, metavar="A",
                        help="forget coefficient: θc − α·τf (inside the experiment's alpha_range, checked first)")
    parser.add_argument("--beta", type=float, default=0.0, metavar="B",
                        help="retain coefficient: + β·τr (inside the experiment's beta_range; default 0)")


def requested_threads(args: argparse.Namespace) -> Optional[int]:
    """The thread count asked for on the command line (``msa --threads N``), checked; None if not given."""
    raw = getattr(args, "global_threads", None)
    return None if raw is None else parse_threads(raw, "--threads")


def apply_requested_threads(args: argparse.Namespace) -> Optional[ThreadChoice]:
    """At start: apply ``--threads`` or ``MSA_THREADS`` when either is set (engine commands apply the
    size rule once the model is loaded, :func:`load_engine`); returns what was applied."""
    explicit = requested_threads(args)
    if explicit is None and env_threads() is None:
        return None
    return apply_threads(choose_threads(None, explicit))


def module_filter(only: Optional[str], layers: Optional[str]) -> Optional[ModuleFilter]:
    """The ModuleFilter of ``--only REGEX`` / ``--layers FIRST-LAST`` (None when neither is given)."""
    if not only and not layers:
        return None
    from msa_core.engine import ModuleFilter

    span = None
    if layers:
        try:
            first, last = (int(x) for x in layers.split("-"))
        except ValueError:
            raise ValueError(f"--layers must look like 0-7, got {layers!r}") from None
        span = (first, last)
    return ModuleFilter(include=only, layers=span)


def parse_device_map(text: Optional[str]) -> Any:
    """``--device-map``: None; 'auto' (or balanced / balanced_low_0 / sequential); a JSON object
    (text starting with '{', or a .json file) mapping module names to devices; else a device name.
    Raises ValueError naming the option (and the file) when the JSON is not an object."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--device-map: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError("--device-map: the JSON must be an object mapping module names to devices")
        return value
    path = Path(raw).expanduser()
    if raw.lower().endswith(".json") or path.is_file():
        from msa_core.untrusted import read_json_object

        if not path.is_file():
            raise FileNotFoundError(f"--device-map: {path} does not exist")
        return read_json_object(path)
    return raw


def parse_max_memory(text: Optional[str]) -> Optional[dict[str, str]]:
    """``--max-memory 'cuda:0=70GiB,cpu=100GiB'`` → {'cuda:0': '70GiB', 'cpu': '100GiB'} (checked
    further by :func:`msa_core.engine.resolve_max_memory`). ValueError names a malformed item."""
    if text is None or not text.strip():
        return None
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, size = item.partition("=")
        if not sep or not key.strip() or not size.strip():
            raise ValueError(f"--max-memory: {item.strip()!r} must look like DEVICE=SIZE, e.g. cuda:0=70GiB")
        if key.strip() in out:
            raise ValueError(f"--max-memory: device {key.strip()!r} is given twice")
        out[key.strip()] = size.strip()
    return out


def chosen_experiment(args: argparse.Namespace, experiment: Experiment) -> Experiment:
    """``experiment`` on the θ_clean / epoch choice of ``--clean`` / ``--forget-epoch`` /
    ``--retain-epoch`` (msa_core.choices.experiment_for: the same derived experiment, vector cache
    and results fingerprint as the app's pickers); ``experiment`` itself when none is given."""
    from msa_core.choices import Choice, experiment_for
    from msa_core.experiment import DEFAULT_CANDIDATE

    clean = getattr(args, "clean", None) or DEFAULT_CANDIDATE
    choice = Choice(clean, getattr(args, "forget_epoch", None), getattr(args, "retain_epoch", None))
    if choice.is_default:
        return experiment
    derived = experiment_for(experiment, choice)
    note(args, f"using {choice.label()}")
    return derived


def load_engine(args: argparse.Namespace, experiment: Experiment) -> Engine:
    """The engine of ``experiment`` as the engine arguments ask (progress on stderr)."""
    from msa_core.engine import Engine

    flt = module_filter(args.only, args.layers)
    device_map = parse_device_map(getattr(args, "device_map", None))
    max_memory = parse_max_memory(getattr(args, "max_memory", None))
    if max_memory is not None and device_map is None:
        raise ValueError("--max-memory needs --device-map (e.g. --device-map auto)")
    experiment = chosen_experiment(args, experiment)
    engine = Engine.load(experiment, device=args.device, dtype=args.dtype, module_filter=flt,
                         progress=progress_for(args), vector_dtype=getattr(args, "vector_dtype", None) or "float32",
                         device_map=device_map, max_memory=max_memory)
    choice = apply_threads(choose_threads(engine.parameter_count, requested_threads(args)))
    note(args, f"torch threads: {choice.describe()}")
    return engine


def experiment_at_point(args: argparse.Namespace) -> Experiment:
    """The experiment of ``args``, with ``--alpha`` / ``--beta`` checked against its ranges
    before anything heavy is loaded."""
    experiment = load_experiment(args.experiment)
    experiment.validate_coefficients(args.alpha, args.beta)
    return experiment


def output_folder(args: argparse.Namespace, experiment: Experiment) -> Path:
    """``--out`` (default: :func:`msa_core.paths.default_export_dir`), checked before the model
    is loaded: not empty, not one of the experiment's inputs, and not an existing folder unless
    ``--force`` and it is a previous export. export_model checks again when it writes (then also
    against the vector cache, whose folder is known only once the engine is loaded)."""
    from msa_core.paths import default_export_dir, default_results_path, output_collision

    if args.out is None:
        out = default_export_dir(experiment.name, args.alpha, args.beta)
    else:
        raw = str(args.out)
        # Path("") is Path("."): an empty --out would otherwise mean the current directory.
        if not raw.strip() or Path(raw) == Path("."):
            raise ValueError(f"--out is empty or '.' ({raw!r}); give the name of a folder to create")
        out = Path(raw).expanduser().resolve()
    inputs = {f"the {role} checkpoint": path for role, path in experiment.checkpoints.as_dict().items()}
    inputs.update({"the results store": default_results_path(), "the TOFU data folder": experiment.data.tofu,
                   "the MUSE data folder": experiment.data.muse,
                   "the reference results file": experiment.reference_eval, "the experiment file": experiment.source})
    collision = output_collision(out, inputs)
    if collision is not None:
        raise ValueError(f"refusing to export to {out}: {collision}; choose another output folder")
    if out.exists() or out.is_symlink():
        from msa_core.export import MARKER, is_export

        empty = out.is_dir() and not any(out.iterdir())
        if not args.force:
            raise FileExistsError(f"--out {out} already exists; add --force to replace it")
        if not (empty or is_export(out)):
            raise FileExistsError(f"--out {out} exists and is not an MSA export (no {MARKER}); "
                                  "refusing to replace it, even with --force")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from msa_core.demo import build_demo

    t0 = time.perf_counter()
    # --out '' is passed on (and refused), not taken as "the default folder"
    store = None
    if args.store:
        from msa_core.eval.store import ResultStore

        store = ResultStore(args.store)
    path = build_demo(args.out, quick=args.quick, seed=args.seed, progress=progress_for(args), force=args.force,
                      store=store)
    payload = {"experiment": str(path), "seconds": round(time.perf_counter() - t0, 2)}
    emit(args.json, payload, lambda: print(path))
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from msa_core.vectors import compute_vectors, layer_norms

    vs = compute_vectors(load_experiment(args.experiment), progress=progress_for(args))
    layers = layer_norms(vs.norms)
    payload = {
        "cache": str(vs.path),
        "from_cache": vs.from_cache,
        "seconds": round(vs.seconds, 3),
        "fingerprint": vs.fingerprint,
        "layers": {row.layer: {k: v for k, v in asdict(row).items() if k != "layer"} for row in layers},
    }

    def human() -> None:
        print(f"vectors {'loaded from cache' if vs.from_cache else 'computed'} in {vs.seconds:.2f}s: {vs.path}")
        print(f"{'layer':<8}{'tensors':>8}{'‖τ_f‖':>12}{'‖τ_r‖':>12}{'cos':>8}")
        for row in layers:
            print(f"{row.layer:<8}{row.tensors:>8}{row.forget:>12.4f}{row.retain:>12.4f}{row.cosine:>8.3f}")

    emit(args.json, payload, human)
    return 0


def cmd_compose(args: argparse.Namespace) -> int:
    experiment = experiment_at_point(args)
    out_dir = output_folder(args, experiment)
    from msa_core.export import export_model, stored_metrics  # torch: after the checks above

    engine = load_engine(args, experiment)
    stored = stored_metrics(engine, args.alpha, args.beta)  # the results store's numbers for this point, if any
    out = export_model(engine, args.alpha, args.beta, out_dir, force=args.force,
                       metrics=stored["metrics"] if stored else None, metrics_from=stored and stored["source"])
    emit(args.json, {"out": str(out), "alpha": args.alpha, "beta": args.beta}, lambda: print(out))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    prompts: list[str] = list(args.prompt or [])
    if not prompts:
        raise ValueError("give at least one --prompt")
    experiment = experiment_at_point(args)
    from msa_core.generation import generate_answers  # torch: after the checks above
    from msa_core.side_cache import side_answers
    from msa_core.targets import Point, Side, has_model, model_for

    engine = load_engine(args, experiment)
    targets = [Side("corrupted"), Point(args.alpha, args.beta), Side("reference")]
    columns: dict[str, list[str]] = {}
    for target in targets:
        if not has_model(engine, target):
            continue
        if isinstance(target, Side) and not args.sample:
            # greedy side answers come from the on-disk side cache (computed once per prompt)
            columns[target.label] = side_answers(engine, target.role, prompts, max_new_tokens=args.max_new_tokens)
            continue
        with model_for(engine, target) as model:
            columns[target.label] = generate_answers(
                model, engine.tokenizer, prompts, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                seed=args.seed, prompt_format=engine.experiment.prompt_format,
            )
    rows = [{"prompt": p, **{k: v[i] for k, v in columns.items()}} for i, p in enumerate(prompts)]

    def human() -> None:
        for row in rows:
            print(f"\n> {row['prompt']}")
            for k in columns:
                print(f"  {k:<28} {row[k]}")

    emit(args.json, {"alpha": args.alpha, "beta": args.beta, "answers": rows}, human)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add demo, vectors, compose and generate to the ``msa`` parser."""
    p = sub.add_parser("demo", help="build the embedded demo experiment (no download)")
    p.add_argument("--out", default=None, help="folder (default: cache/demo or cache/demo-quick)")
    p.add_argument("--quick", action="store_true", help="tiny variant for tests (< 1 min)")
    p.add_argument("--store", default=None, metavar="PATH",
                   help="results store for the comparison's points (default: the app's store for the default "
                        "folder, else <out>/results.sqlite)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo's data and training (default 0)")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if a finished build exists (only a folder made by msa demo is replaced)")
    add_output_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("vectors", help="compute or load the cached forget/retain vectors; per-layer norms")
    p.add_argument("experiment", help="experiment YAML file")
    add_output_args(p)
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("compose", help="write the unlearned model at (α, β) as an HF folder")
    add_engine_args(p)
    add_point_args(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder to create (default: <cache>/exports/<experiment>-a<A>-b<B>; "
                        "checked before the model is loaded)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder made by msa compose")
    add_output_args(p)
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("generate", help="side-by-side answers: corrupted / unlearned / reference")
    add_engine_args(p)
    add_point_args(p)
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="a question, asked in the experiment's QA format (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=48, metavar="N",
                   help="longest answer in tokens (default 48, the Playground's)")
    p.add_argument("--sample", action="store_true",
                   help="sample (seeded by --seed) instead of greedy decoding; greedy is reproducible without a seed")
    p.add_argument("--seed", type=int, default=0, help="sampling seed with --sample (default 0)")
    add_output_args(p)
    p.set_defaults(func=cmd_generate)
