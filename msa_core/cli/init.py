"""``msa init``: from a clean checkpoint and a TOFU-format data folder to a ready experiment.

Fine-tunes θ_forget, θ_retain, θ_corrupted (and optionally the reference) with
:func:`msa_core.recipe.init_experiment` — reusing any that a previous run already made
with the same settings — and writes ``OUT/experiment.yaml`` for ``streamlit run app.py``,
``msa vectors``, ``msa sweep`` and ``msa compose``. ``--task-vector`` adds the task-vector
baseline (θ_corrupted fine-tuned on the forget and retain data) to the experiment's
``clean_history``; ``--save-every-epoch`` keeps the forget/retain fine-tunes' epoch folders
(the paper's e_f, e_r) — the corrupted and reference fine-tunes keep none unless
``--set corrupted.save_every_epoch=true``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from msa_core.cli.output import add_output_args, emit, progress_for

if TYPE_CHECKING:
    from msa_core.finetune import TrainConfig


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the training options: each option given replaces the recipe default."""
    from msa_core.finetune import TrainConfig

    keys = ("epochs", "lr", "batch_size", "grad_accum", "max_length", "seed", "precision", "num_threads")
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    flags = {key: True for key in ("gradient_checkpointing", "save_every_epoch", "group_by_length")
             if getattr(args, key)}
    return TrainConfig(**given, **flags)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The training options passed to every fine-tune (unset = the reference recipe's default)."""
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fine-tune (default 10)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-5)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, default=None, help="longest tokenised example")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument("--precision", default=None, help="auto (bf16 autocast on a GPU) / bf16 / fp32; "
                        "master weights stay fp32 either way")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    parser.add_argument("--save-every-epoch", action="store_true",
                        help="keep <role>/epoch-1, epoch-2, … (the paper's e_f, e_r)")
    parser.add_argument("--group-by-length", action="store_true",
                        help="batch examples of like length (less padding when short QA and long texts mix)")
    parser.add_argument("--threads", dest="num_threads", type=int, default=None,
                        help="CPU torch threads while training (default: msa --threads / $MSA_THREADS, else torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="ROLE.FIELD=VALUE",
                        help="one fine-tune's setting, e.g. forget.lr=3e-4 or retain.epochs=5 (repeatable)")


def cmd_init(args: argparse.Namespace) -> int:
    from msa_core.recipe import Stages, init_experiment, parse_extra_data, parse_role_settings

    stages = Stages(forget=args.forget, retain=args.retain, full=None if args.corrupted else args.full,
                    corrupted=Path(args.corrupted) if args.corrupted else None, reference=args.reference,
                    extra=parse_extra_data(args.add))
    config = training_config(args)
    role_configs = parse_role_settings(config, args.set)
    if config.save_every_epoch:
        # e_f / e_r are epochs of the forget and retain fine-tunes only: the corrupted and
        # reference models would keep whole-model copies per epoch for nothing.
        plain = dataclasses.replace(config, save_every_epoch=False)
        own = [s for s in args.set if str(s).split(".", 1)[0].strip() in ("corrupted", "reference")]
        role_configs.update({role: plain for role in ("corrupted", "reference")})
        role_configs.update(parse_role_settings(plain, own))
    result = init_experiment(Path(args.clean), Path(args.data_dir), Path(args.out), stages, config,
                             role_configs=role_configs, muse_dir=Path(args.muse_dir) if args.muse_dir else None,
                             progress=progress_for(args), task_vector=args.task_vector)
    payload = result.summary()

    def human() -> None:
        for role, run in payload["runs"].items():
            loss = "" if run["final_loss"] is None else f" (loss {run['final_loss']:.4f})"
            what = "reused" if run["reused"] else f"trained in {run['seconds']:.1f}s{loss}"
            print(f"{role:<20} {what}: {run['out']}")
        print(payload["experiment"])

    emit(args.json, payload, human)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``init`` to the ``msa`` parser."""
    p = sub.add_parser("init", help="fine-tune forget/retain/corrupted models from a clean one; write experiment.yaml")
    p.add_argument("clean", help="the clean checkpoint (a local Hugging Face causal-LM folder)")
    p.add_argument("--data-dir", required=True, help="TOFU-format data folder (e.g. ../shared/data/tofu)")
    p.add_argument("--forget", default="forget10", help="forget split (default forget10)")
    p.add_argument("--retain", default=None,
                   help="retain split; θ_retain trains on its seeded forget-sized sample <retain>_ft "
                        "(default: the forget split's complement, e.g. retain90)")
    p.add_argument("--full", default="full", help="split the corrupted model is trained on (default full)")
    p.add_argument("--corrupted", default=None, help="use this existing corrupted checkpoint instead of training one")
    p.add_argument("--reference", action="store_true",
                   help="also train the reference (retain-only) model on the whole retain split")
    p.add_argument("--muse-dir", default=None,
                   help="MUSE-format data folder: --add muse:PATH specs read from it, and experiment.yaml's "
                        "data.muse names it (the MUSE metrics)")
    p.add_argument("--add", action="append", default=[], metavar="ROLE=SPEC",
                   help="extra data one fine-tune also trains on, after its split, e.g. "
                        "corrupted=muse:raw/forget (muse: from --muse-dir, tofu: from --data-dir; repeatable)")
    p.add_argument("--task-vector", action="store_true",
                   help="also fine-tune the corrupted model on the forget and retain data (OUT/task-vector/): "
                        "the task-vector baseline, listed in experiment.yaml's clean_history")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per model, and experiment.yaml")
    add_training_args(p)
    add_output_args(p)
    p.set_defaults(func=cmd_init)
