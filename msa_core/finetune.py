"""A small, seeded causal-LM training loop (used to build the demo's checkpoints).

- :func:`qa_examples` turns question/answer pairs into training examples through
  :func:`msa_core.prompts.encode_qa` (the one QA format): the prompt is masked and the
  loss covers the answer tokens including EOS.
- :func:`text_examples` turns raw texts into examples (BOS-prefixed, EOS-terminated,
  loss on every text token).
- :func:`train` runs AdamW with linear warm-up and cosine decay over length-grouped,
  seeded batches. Master weights are always fp32: a model in another dtype is
  converted to fp32 before training (pure bf16 training is never done).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch

from msa_core.progress import Progress, report
from msa_core.prompts import encode_qa

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and labels (IGNORE_INDEX where not scored)."""

    input_ids: list[int]
    labels: list[int]


def qa_examples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], *, max_len: int = 256
) -> list[Example]:
    """Examples for QA pairs: prompt masked, answer tokens (with EOS) scored."""
    out = []
    for i, (q, a) in enumerate(pairs):
        p_ids, a_ids = encode_qa(tokenizer, q, a)
        ids = p_ids + a_ids
        if len(ids) > max_len:
            raise ValueError(f"QA pair {i} ({q[:40]!r}) is {len(ids)} tokens, longer than max_len={max_len}")
        out.append(Example(ids, [IGNORE_INDEX] * len(p_ids) + a_ids))
    return out


def text_examples(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_len: int = 256) -> list[Example]:
    """Examples for raw texts: BOS + text + EOS, every token after BOS scored."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; text examples end with EOS")
    out = []
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [int(tokenizer.eos_token_id)]
        if tokenizer.bos_token_id is not None:
            ids = [int(tokenizer.bos_token_id)] + ids
            labels = [IGNORE_INDEX] + ids[1:]
        else:
            labels = list(ids)
        if len(ids) > max_len:
            raise ValueError(f"text {i} ({text[:40]!r}) is {len(ids)} tokens, longer than max_len={max_len}")
        out.append(Example(ids, labels))
    return out


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels (padding ignored)."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_batches(examples: Sequence[Example], batch_size: int, generator: torch.Generator,
                 group: int = 8) -> list[list[int]]:
    """Seeded length-grouped batches of indices: shuffle, sort within chunks, shuffle batches."""
    order = torch.randperm(len(examples), generator=generator).tolist()
    chunk = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(examples[i].input_ids))
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    num_threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TrainResult:
    """What a run did: mean loss per epoch, optimizer steps, wall seconds."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def lr_factor(step: int, total: int, warmup_frac: float, min_lr_frac: float) -> float:
    """Linear warm-up then cosine decay to ``min_lr_frac`` of the peak."""
    warm = max(1, int(round(total * warmup_frac)))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(model: torch.nn.Module, examples: Sequence[Example], config: TrainConfig, *, pad_id: int,
          progress: Optional[Progress] = None, label: str = "training") -> TrainResult:
    """Train ``model`` in place on ``examples`` (fp32 master weights, AdamW, seeded order)."""
    if not examples:
        raise ValueError(f"{label}: no training examples")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()  # master weights are always fp32
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(max(1, int(config.num_threads)))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    result = TrainResult()
    every = max(1, total // 200)  # at most ~200 progress reports per run
    start = time.perf_counter()
    model.train()
    try:
        for epoch in range(config.epochs):
            loss_sum, tokens = 0.0, 0
            for batch_idx in make_batches(examples, config.batch_size, generator):
                for g in opt.param_groups:
                    g["lr"] = config.lr * lr_factor(result.steps, total, config.warmup_frac, config.min_lr_frac)
                batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_idx], pad_id).items()}
                out = model(**batch)
                loss = out.loss
                if not torch.isfinite(loss):
                    raise ValueError(f"{label}: loss became {loss.item()} at epoch {epoch + 1}, step {result.steps}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                loss_sum += float(loss.detach()) * n
                tokens += n
                result.steps += 1
                if result.steps % every == 0 or result.steps == total:
                    report(progress, result.steps / total, f"{label}: epoch {epoch + 1}/{config.epochs}")
            result.epoch_losses.append(loss_sum / max(1, tokens))
    finally:
        model.eval()
        torch.set_num_threads(old_threads)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int = 64) -> float:
    """Token-weighted mean cross-entropy of ``model`` over the scored tokens of ``examples``."""
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(examples[start:start + batch_size]), pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(ce)
        tokens += int((labels != IGNORE_INDEX).sum())
    return total / max(1, tokens)
