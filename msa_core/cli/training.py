"""``msa finetune``: fine-tune a base model on local TOFU/MUSE data (the method's first step).

One call of :func:`msa_core.finetune.finetune`; see :mod:`msa_core.cli.output` for the
``--json`` rule. Defaults are :class:`msa_core.finetune.TrainConfig`'s (the reference recipe):
an option left out is not passed, so the library's default is the one place it lives (and
the training stack, transformers' Trainer, is imported only when the command runs).
Multi-GPU: ``accelerate launch -m msa_core finetune …`` (DDP; a DeepSpeed ZeRO-3 accelerate
config works the same way).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from msa_core.cli.output import add_output_args, emit, note, progress_for

# Options passed on to TrainConfig when given (dest → TrainConfig field).
_CONFIG_OPTIONS = {
    "epochs": "epochs", "lr": "lr", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs",
    "scheduler": "scheduler", "batch_size": "batch_size", "grad_accum": "grad_accum", "max_length": "max_length",
    "seed": "seed", "precision": "precision", "threads": "num_threads",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``finetune`` to the ``msa`` parser."""
    p = sub.add_parser("finetune", help="fine-tune a base model on TOFU/MUSE data (Trainer; fp32 master weights)",
                       description="Fine-tune BASE (a local HF causal-LM folder) on local data into --out.")
    p.add_argument("base", help="base model folder (HF causal LM, e.g. Llama-3.2-1B-Instruct)")
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="tofu:forget10 | tofu:retain90_ft | tofu:full | muse:news/raw/forget (repeatable)")
    p.add_argument("--data-dir", required=True, type=Path, help="the TOFU- or MUSE-format data folder")
    p.add_argument("--out", required=True, type=Path, help="output model folder")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: the base folder)")
    # The names are msa_core.prompts.PROMPT_FORMATS; listed here so `msa --help` stays import-light.
    p.add_argument("--prompt-format", default=None, choices=("auto", "plain", "chat", "open-unlearning-tofu"),
                   help="how QA pairs become text: the experiment file's prompt_format values (default: auto, "
                        "the tokenizer's chat template when it has one, else 'Question: …\\nAnswer: …')")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's, 10)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 1e-5)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the recipe's)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="learning-rate warm-up, in epochs (default: the recipe's)")
    p.add_argument("--scheduler", default=None, help="transformers scheduler name (default: the recipe's, linear)")
    p.add_argument("--batch-size", type=int, default=None, help="per device (default: the recipe's)")
    p.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="longest tokenised example (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the recipe's)")
    p.add_argument("--precision", default=None,
                   help="auto (bf16 autocast on a GPU; the default) | fp32 | bf16; master weights are fp32 always")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--save-every-epoch", action="store_true", help="keep OUT/epoch-1, OUT/epoch-2, …")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU torch threads while training (default: msa --threads / $MSA_THREADS, else torch's)")
    p.add_argument("--no-reuse", action="store_true", help="train again even if OUT matches these inputs")
    add_output_args(p)
    p.set_defaults(func=cmd_finetune)


def _is_main_process() -> bool:
    # Under accelerate launch / torchrun every process runs this command; one of them speaks.
    return os.environ.get("RANK", "0") == "0"


def cmd_finetune(args: argparse.Namespace) -> int:
    from msa_core.finetune import FinetuneOutOfMemory, TrainConfig, finetune, load_training_data

    main_process = _is_main_process()
    given: dict[str, Any] = {field: getattr(args, dest) for dest, field in _CONFIG_OPTIONS.items()
                             if getattr(args, dest) is not None}
    config = TrainConfig(**given, save_every_epoch=args.save_every_epoch,
                         gradient_checkpointing=args.gradient_checkpointing)
    data = [load_training_data(spec, args.data_dir) for spec in args.data]
    if main_process:
        note(args, "data: " + ", ".join(f"{d.name} ({len(d)} {'pairs' if d.kind == 'qa' else 'texts'})" for d in data))
    try:
        res = finetune(args.base, data, args.out, config, tokenizer=args.tokenizer,
                       prompt_format=None if args.prompt_format == "auto" else args.prompt_format,
                       progress=progress_for(args) if main_process else None, reuse=not args.no_reuse)
    except FinetuneOutOfMemory as exc:
        print(f"msa finetune: error: {exc}", file=sys.stderr)
        return 2
    payload = {
        "out": str(res.out), "epochs_done": res.epochs_done, "final_loss": res.final_loss,
        "seconds": round(res.seconds, 3), "resumed": res.resumed, "reused": res.reused,
        "epoch_dirs": [str(p) for p in res.epoch_dirs],
        "data": [{"name": d.name, "kind": d.kind, "size": len(d), "signature": d.signature} for d in data],
        "config": config.key(),
    }

    def human() -> None:
        how = "reused (same base, data and settings)" if res.reused else (
            f"{'resumed and ' if res.resumed else ''}trained {res.epochs_done} epochs in {res.seconds:.1f}s"
            + (f", final loss {res.final_loss:.4f}" if res.final_loss is not None else ""))
        print(f"{res.out}: {how}")
        for p in res.epoch_dirs:
            print(f"  {p}")

    if main_process:
        emit(args.json, payload, human)
    return 0
