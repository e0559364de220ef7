"""Batched generation: greedy by default, seeded sampling on request.

Prompts are left-padded so every row ends at the same position; answers are cut at
EOS, special tokens are skipped and whitespace stripped. ``generate_answers`` wraps
questions in the QA format of :mod:`msa_core.prompts`; ``generate_text`` takes raw
prompts (MUSE continuations, few-shot prompts) and optional stop strings.

Prompts longer than :data:`MAX_PROMPT_CHARS` are refused, never truncated: generation runs
inside the engine's lock, so one huge prompt would hold every other session's move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.progress import Progress, report
from msa_core.prompts import encode_prompt, qa_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The longest prompt (characters) generation accepts by default. The longest real prompts are
# MUSE VerbMem continuations (~4.4k characters) and KnowMem few-shot prompts (~3k); a 100k-character
# prompt held the shared engine for 45 s on the CPU. Callers with longer data pass max_prompt_chars.
MAX_PROMPT_CHARS = 8000


def check_prompt_lengths(prompts: Sequence[str], limit: Optional[int] = MAX_PROMPT_CHARS) -> None:
    """Raise ValueError naming the first prompt (index) longer than ``limit`` characters (None: no limit)."""
    if limit is None:
        return
    for i, p in enumerate(prompts):
        if len(p) > limit:
            raise ValueError(f"prompt {i} is {len(p)} characters long; the limit is {limit} (it is not truncated)")

def _pad_left(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def cut_at_stops(text: str, stops: Optional[Sequence[str]]) -> str:
    """``text`` up to the earliest stop string (all of it when none occurs)."""
    if not stops:
        return text
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


@torch.no_grad()
def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    stop: Optional[Sequence[str]] = None,
    max_prompt_chars: Optional[int] = MAX_PROMPT_CHARS,
    progress: Optional[Progress] = None,
) -> list[str]:
    """Continuations of raw prompts, one string per prompt (stripped, cut at ``stop``).

    Raises ValueError for a prompt longer than ``max_prompt_chars`` (None: no limit).
    """
    check_prompt_lengths(prompts, max_prompt_chars)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[str] = []
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        # Greedy: clear sampling defaults a checkpoint's generation_config may carry.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            ids, mask = _pad_left(rows, pad_id, device)
            gen = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = gen[:, ids.shape[1] :]
            for row in new.tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                text = tokenizer.decode(row, skip_special_tokens=True)
                out.append(cut_at_stops(text, stop).strip())
            # After each batch: a caller inside engine.session may yield the engine here.
            report(progress, len(out) / len(encoded), f"generated {len(out)}/{len(encoded)}")
    return out


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    max_prompt_chars: Optional[int] = MAX_PROMPT_CHARS,
    progress: Optional[Progress] = None,
    prompt_format: Optional[str] = None,
) -> list[str]:
    """Answers to questions asked in the QA format ``prompt_format`` (:mod:`msa_core.prompts`; default
    "auto": the chat template or ``Question: …\\nAnswer:``).

    Raises ValueError for a question longer than ``max_prompt_chars`` (None: no limit).
    """
    check_prompt_lengths(questions, max_prompt_chars)  # indexes the user's questions, not the wrapped prompts
    prompts = [qa_prompt(tokenizer, q, prompt_format) for q in questions]
    return generate_text(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        max_prompt_chars=None,
        progress=progress,
    )
