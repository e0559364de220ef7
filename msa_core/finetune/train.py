"""``finetune``: one fine-tune of a causal LM on local data with ``transformers.Trainer``.

The output is a complete HF folder (``model.safetensors``, config, tokenizer files) plus
``msa_finetune.json``, the card holding every value used (base path and content
fingerprint, data names and signatures, the whole :class:`TrainConfig`, library versions,
steps, seconds, losses). It is built beside the target and put in place atomically.

- **Master weights are fp32 always.** The base is loaded in fp32 whatever its dtype; on a GPU
  the forward/backward run under bf16 autocast (``precision="auto"``). The reference
  implementation trains in pure bf16, where an AdamW update smaller than half a bf16 ulp of
  the weight (|Δw| < |w|·2⁻⁹, e.g. lr 1e-5 on a weight of 0.02) rounds away. Outputs are
  saved in fp32 too: τ = θ_ft − θ_clean would lose the same updates if stored in bf16.
- **Reuse**: an existing ``out`` whose card has the same base fingerprint, data signatures
  and config is returned as is.
- **Resume**: Trainer checkpoints (weights, optimizer, scheduler, RNG, data position) are
  written at each epoch end into ``.NAME.train/`` beside ``out``; a killed run called again
  with the same inputs continues from the last complete one. The work folder is removed
  only after ``out`` is in place.
- Multi-GPU: run the same call under ``accelerate launch`` / ``torchrun`` (DDP); DeepSpeed
  ZeRO-3 via ``accelerate launch --config_file`` with a DeepSpeed config. The Trainer and
  accelerate do the distribution; the global batch is batch_size × grad_accum × processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from msa_core.atomic import clean_stale_temp, recover_replacement, replace_dir, temp_dir_beside, write_json
from msa_core.finetune.data import TrainingData
from msa_core.finetune.examples import Collator, as_dataset, build_examples
from msa_core.finetune.trainer import (
    OBJECTIVES,
    PAIRED_OBJECTIVES,
    EpochExporter,
    MsaTrainer,
    ProgressReporter,
    model_files,
)
from msa_core.progress import Progress, report
from msa_core.untrusted import read_json_object

CARD = "msa_finetune.json"
CARD_FORMAT = "msa-finetune-1"
RUN_FILE = "run.json"  # in the work folder: the key of the run its checkpoints belong to
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULERS = ("linear", "constant_with_warmup", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fine-tune. Defaults are the reference recipe (the MSA paper's
    ``configs/trainer/trainer_config.yaml`` and ``scripts/finetune.sh``, which follow TOFU's
    fine-tuning): lr 1e-5, weight decay 0.01, 1 warm-up epoch, linear schedule, 10 epochs,
    batch 4 per device, max length 512 (``configs/data/TOFU_QA_*.yaml``), AdamW with the
    Trainer's defaults (β 0.9/0.999, ε 1e-8, gradient clipping at norm 1.0), seed 42
    (the Trainer's default). ``num_threads`` (CPU torch threads) and ``resumable`` (write a
    Trainer checkpoint at each epoch end so a killed run can continue; about 20 ms per epoch
    for a 2M-parameter model, seconds for billions) do not change the weights and are not part
    of the reuse key."""

    epochs: int = 10
    lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    scheduler: str = "linear"
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 42
    save_every_epoch: bool = False
    gradient_checkpointing: bool = False
    precision: str = "auto"
    objective: str = "sft"
    max_grad_norm: float = 1.0
    group_by_length: bool = False
    num_threads: Optional[int] = None
    resumable: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "warmup_epochs", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"TrainConfig.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainConfig.objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"TrainConfig.num_threads must be an integer >= 1 or None, got {self.num_threads!r}")

    def key(self) -> dict[str, Any]:
        """The values that change the trained weights (everything but ``num_threads``, ``resumable``)."""
        values = dataclasses.asdict(self)
        values.pop("num_threads")
        values.pop("resumable")
        return values


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced: the folder, epochs trained, final epoch's mean loss,
    wall seconds of this call, whether it resumed a killed run or reused a finished one, and
    the per-epoch folders (empty unless ``save_every_epoch``)."""

    out: Path
    epochs_done: int
    final_loss: Optional[float]
    seconds: float
    resumed: bool = False
    epoch_dirs: list[Path] = field(default_factory=list)
    reused: bool = False


class FinetuneOutOfMemory(MemoryError):
    """Training ran out of device memory; the message names the settings that would fit."""


# ---------------------------------------------------------------- inputs and keys


def check_causal_lm(base: Path) -> None:
    """FileNotFoundError / ValueError naming ``base`` unless it is a local HF causal-LM folder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not base.is_dir():
        raise FileNotFoundError(f"base model folder {base} does not exist")
    if not (base / "config.json").is_file():
        raise ValueError(f"base model folder {base} has no config.json; it is not a Hugging Face model folder")
    cfg = read_json_object(base / "config.json")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    ):
        raise ValueError(
            f"base model folder {base} is not a causal language model "
            f"(config.json: model_type {model_type!r}, architectures {archs})"
        )


def _tokenizer_fingerprint(folder: Path) -> str:
    import hashlib

    from msa_core.fingerprints import file_digest

    h = hashlib.sha256(b"msa-tokenizer-v1;")
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".json", ".model", ".txt", ".jinja") and p.name != CARD:
            h.update(f"{p.name}:{file_digest(p)};".encode())
    return h.hexdigest()[:32]


def run_key(base: Path, tokenizer: Optional[Path], data: Sequence[TrainingData], config: TrainConfig) -> dict[str, Any]:
    """What a finished fine-tune must match to be reused: inputs by content, and the config."""
    from msa_core.fingerprints import checkpoint_fingerprint

    return {
        "base_fingerprint": checkpoint_fingerprint(base),
        "tokenizer_fingerprint": _tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "data": [[d.name, d.kind, d.signature] for d in data],
        "config": config.key(),
    }


def read_card(out: Path) -> Optional[dict[str, Any]]:
    """The card of a finished fine-tune folder, or None when there is none."""
    path = out / CARD
    return read_json_object(path) if path.is_file() else None


def is_complete(folder: Path) -> bool:
    """A finished fine-tune folder: card, config and weights present."""
    return (folder / CARD).is_file() and (folder / "config.json").is_file() and any(
        folder.glob("model*.safetensors")
    )


def work_dir(out: Path) -> Path:
    """The folder beside ``out`` holding a run's Trainer checkpoints until it finishes."""
    return out.parent / f".{out.name}.train"


def _last_checkpoint(work: Path) -> Optional[Path]:
    """The newest checkpoint the Trainer finished writing (trainer_state.json comes last)."""
    done = [p for p in work.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _prepare_work(work: Path, key: dict[str, Any]) -> Optional[Path]:
    """Checkpoint to resume from (None: fresh start). A work folder of other inputs is cleared."""
    run_file = work / RUN_FILE
    if work.exists():
        if not run_file.is_file():
            raise FileExistsError(f"{work} exists and was not made by msa finetune; move it away")
        if read_json_object(run_file).get("key") == key:
            return _last_checkpoint(work)
        shutil.rmtree(work)  # an interrupted run of other inputs or settings: its state is useless
    work.mkdir(parents=True)
    write_json(run_file, {"format": CARD_FORMAT, "key": key})
    return None


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


def _oom_advice(config: TrainConfig) -> str:
    tips = []
    if config.batch_size > 1:
        half = config.batch_size // 2
        tips.append(f"--batch-size {half} --grad-accum {config.grad_accum * config.batch_size // half} "
                    "(the same effective batch)")
    if not config.gradient_checkpointing:
        tips.append("--gradient-checkpointing")
    tips.append(f"a lower --max-length than {config.max_length}")
    return "; or ".join(tips)


# ---------------------------------------------------------------- the run


def uses_bf16_autocast(config: TrainConfig) -> bool:
    """Whether forward/backward run under bf16 autocast: ``precision="bf16"``, or "auto" on a bf16 GPU."""
    return config.precision == "bf16" or (
        config.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def schedule_steps(n_examples: int, config: TrainConfig, processes: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, warm-up steps) for ``n_examples`` examples under ``config``."""
    batches = math.ceil(n_examples / (config.batch_size * processes))
    # Optimizer steps per epoch, counted as the Trainer counts them (a short last accumulation counts).
    steps_per_epoch = batches // config.grad_accum + int(batches % config.grad_accum > 0)
    # The reference's warmup_steps = int(warmup_epochs × steps per epoch).
    return steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)


def _training_args(work: Path, config: TrainConfig, warmup_steps: int, use_bf16: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work), num_train_epochs=config.epochs, learning_rate=config.lr,
        weight_decay=config.weight_decay, warmup_steps=warmup_steps, lr_scheduler_type=config.scheduler,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        max_grad_norm=config.max_grad_norm, seed=config.seed, data_seed=config.seed,
        # CPU bf16 autocast is only allowed with use_cpu (the Trainer's check assumes bf16 means a GPU).
        bf16=use_bf16, fp16=False, use_cpu=use_bf16 and not torch.cuda.is_available(),
        activation_checkpointing=config.gradient_checkpointing or None,
        save_strategy="epoch" if config.resumable or config.save_every_epoch else "no",
        save_total_limit=1, save_only_model=False,
        logging_strategy="epoch", report_to="none", disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
    )


def finetune(
    base: Path,
    data: TrainingData | Sequence[TrainingData],
    out: Path,
    config: TrainConfig,
    *,
    tokenizer: Path | None = None,
    progress: Progress | None = None,
    reuse: bool = True,
    prompt_format: str | None = None,
) -> FinetuneResult:
    """Fine-tune the causal LM in ``base`` on ``data`` (concatenated) and write it to ``out``.
    QA pairs are encoded in ``prompt_format`` (:mod:`msa_core.prompts`; None: the default "auto",
    and then the reuse key is the same as before the option existed).

    ``tokenizer`` is the tokenizer folder when it is not ``base``. Returns the existing
    ``out`` untouched when ``reuse`` and its card matches these inputs (``reused=True``).
    Raises FileNotFoundError/ValueError naming a bad base folder or data, FileExistsError
    for an ``out`` this tool did not make, :class:`FinetuneOutOfMemory` with settings that fit.
    """
    started = time.perf_counter()
    base, out = Path(base).expanduser(), Path(out).expanduser()
    sets = [data] if isinstance(data, TrainingData) else list(data)
    if not sets:
        raise ValueError(f"finetune {out}: no training data given")
    if config.objective in PAIRED_OBJECTIVES:
        raise ValueError(f"finetune {out}: objective {config.objective!r} trains on paired forget/retain batches; "
                         "run it with msa_core.baselines.run_baseline (msa baseline)")
    check_causal_lm(base)
    tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else None
    key = run_key(base, tok_dir, sets, config)
    if prompt_format is not None:
        key = {**key, "prompt_format": prompt_format}

    def build(tok: Any) -> TrainingSet:
        examples = build_examples(tok, sets, config.max_length, prompt_format)
        return TrainingSet(as_dataset(examples, config.group_by_length), Collator(int(tok.pad_token_id)),
                           len(examples))

    return train_folder(base, out, config, key=key, data_card=data_card(sets), build=build, tokenizer=tok_dir,
                        progress=progress, reuse=reuse, started=started)


@dataclass(frozen=True)
class TrainingSet:
    """What the Trainer iterates: the dataset, its collator and the number of examples (which sets
    the schedule)."""

    dataset: Any
    collator: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]
    size: int


def data_card(sets: Sequence[TrainingData], roles: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """The card's description of the training sets (with each one's role when given)."""
    out = []
    for i, d in enumerate(sets):
        entry: dict[str, Any] = {"name": d.name, "kind": d.kind, "signature": d.signature, "size": len(d)}
        if roles is not None:
            entry["role"] = roles[i]
        out.append(entry)
    return out


def train_folder(
    base: Path,
    out: Path,
    config: TrainConfig,
    *,
    key: dict[str, Any],
    data_card: list[dict[str, Any]],
    build: Callable[[Any], TrainingSet],
    prepare: Optional[Callable[[Any, Any, TrainingSet], TrainingSet]] = None,
    objective_params: Optional[dict[str, float]] = None,
    tokenizer: Optional[Path] = None,
    progress: Optional[Progress] = None,
    reuse: bool = True,
    started: Optional[float] = None,
) -> FinetuneResult:
    """The training run behind :func:`finetune` (and the unlearning baselines): reuse by ``key``,
    resume, the Trainer with ``config.objective`` (and ``objective_params``), output folder with card.

    ``build(tokenizer)`` makes the training set before the model is loaded; ``prepare(model, args,
    set)``, when given, may replace it once the base model is loaded in fp32 and before training
    (e.g. adding the reference model's NLLs, :func:`msa_core.finetune.unlearn_data.add_reference_nll`).
    ``objective_params`` are recorded in the card only when given (``key`` must cover them)."""
    started = time.perf_counter() if started is None else started
    base, out = Path(base).expanduser(), Path(out).expanduser()
    tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else None
    recover_replacement(out, is_complete)
    clean_stale_temp(out)
    if out.exists() and not is_complete(out):
        raise FileExistsError(f"{out} exists and is not a fine-tune made by msa finetune; refusing to replace it")
    card = read_card(out) if out.exists() else None
    if reuse and card is not None and card.get("key") == key:
        epochs = sorted(out.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
        report(progress, 1.0, f"{out.name}: reused (same base, data and settings)")
        return FinetuneResult(out, int(card.get("epochs_done", config.epochs)), card.get("final_loss"),
                              time.perf_counter() - started, epoch_dirs=epochs, reused=True)

    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from msa_core.checkpoints import load_model, load_tokenizer

    hf_logging.disable_progress_bar()  # "Writing model shards" bars; callers report progress themselves
    state = PartialState()
    work = work_dir(out)
    resume_from = _prepare_work(work, key) if state.is_main_process else None
    state.wait_for_everyone()
    if not state.is_main_process:
        resume_from = _last_checkpoint(work)
    tok = load_tokenizer(tok_dir or base)
    training_set = build(tok)
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        use_bf16 = uses_bf16_autocast(config)
        steps_per_epoch, warmup_steps = schedule_steps(training_set.size, config, state.num_processes)
        # Arguments before the model: under a DeepSpeed ZeRO-3 launch they make from_pretrained
        # load the weights partitioned instead of whole on every process.
        args = _training_args(work, config, warmup_steps, use_bf16)
        # fp32 master weights whatever the checkpoint's dtype (module docstring).
        model = load_model(base, device="cpu", dtype=torch.float32)
        if prepare is not None:
            training_set = prepare(model, args, training_set)
        model.requires_grad_(True)
        model.train()
        trainer = MsaTrainer(
            model=model, args=args, train_dataset=training_set.dataset,
            data_collator=training_set.collator, processing_class=tok, objective=config.objective,
            objective_params=objective_params,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints log dicts on stdout, which --json - owns
        reporter = ProgressReporter(progress, out.name, config.epochs, steps_per_epoch)
        trainer.add_callback(reporter)
        if config.save_every_epoch:
            trainer.add_callback(EpochExporter(work / "epochs", steps_per_epoch))
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except torch.OutOfMemoryError:
            raise FinetuneOutOfMemory(
                f"out of memory fine-tuning {base} with batch_size={config.batch_size}, "
                f"max_length={config.max_length}, gradient_checkpointing={config.gradient_checkpointing}: "
                f"try {_oom_advice(config)}"
            ) from None
        losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h and "epoch" in h]
        result = FinetuneResult(out, config.epochs, losses[-1] if losses else None, 0.0,
                                resumed=resume_from is not None)
        if state.is_main_process:
            run: dict[str, Any] = {
                "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup_steps, "processes": state.num_processes,
                "total_steps": trainer.state.global_step, "autocast": "bf16" if use_bf16 else "none",
                "epoch_losses": losses, "final_loss": result.final_loss, "examples": training_set.size,
                "resumed_from": resume_from.name if resume_from else None,
                "seconds": round(time.perf_counter() - started, 3),
            }
            if objective_params is not None:
                run["objective_params"] = dict(objective_params)
            result.epoch_dirs = _write_output(trainer, base, tok_dir, data_card, config, key, work, out, run)
            shutil.rmtree(work, ignore_errors=True)
        state.wait_for_everyone()
    finally:
        torch.set_num_threads(old_threads)
    result.seconds = time.perf_counter() - started
    report(progress, 1.0, f"{out.name}: done")
    return result


def _write_output(trainer: MsaTrainer, base: Path, tok_dir: Optional[Path], data: list[dict[str, Any]],
                  config: TrainConfig, key: dict[str, Any], work: Path, out: Path,
                  run: dict[str, Any]) -> list[Path]:
    """Build ``out`` beside it (weights, tokenizer, epoch folders, card) and put it in place."""
    with temp_dir_beside(out) as tmp:
        trainer.save_model(str(tmp))
        for f in tmp.iterdir():
            if f.is_file() and f.name.startswith("training_args"):
                f.unlink()  # a pickle of the Trainer's arguments: the card holds them as JSON
        names: list[str] = []
        epochs_src = work / "epochs"
        if config.save_every_epoch and epochs_src.is_dir():
            for d in sorted(epochs_src.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1])):
                os.replace(d, tmp / d.name)
                names.append(d.name)
        card = {
            "format": CARD_FORMAT, "key": key, "base": str(base.resolve()),
            "tokenizer": str((tok_dir or base).resolve()),
            "data": data,
            "config": dataclasses.asdict(config), "epochs_done": config.epochs, "saved_dtype": "float32",
            "epoch_dirs": names, "versions": _versions(), **run,
        }
        write_json(tmp / CARD, card)
        replace_dir(tmp, out, may_replace=is_complete, is_complete=is_complete)
    return [out / n for n in names]


__all__ = ["CARD", "FinetuneOutOfMemory", "FinetuneResult", "TrainConfig", "TrainingSet", "data_card", "finetune",
           "is_complete", "model_files", "read_card", "run_key", "train_folder", "work_dir"]
