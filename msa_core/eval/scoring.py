"""Batched teacher-forced scoring of (prompt, continuation) token sequences on any causal LM.

:func:`score_pairs` runs each sequence ``prompt + continuation`` through the model once
(batched, sorted by length, padded on the left or right with explicit position ids so a
padded row scores exactly as it would alone) and returns, per pair, statistics over the
continuation tokens only (prompt and padding masked):

- ``nll``: mean per-token cross-entropy (EOS counts when it is part of the continuation),
- ``token_logprobs``: log p_t(x_t) per continuation token (Min-K%),
- ``argmax``: whether the teacher-forced argmax equals each token (ES / EM),
- ``vocab_stats``: μ_t = Σ_v p log p and σ_t² = Σ_v p (log p)² − μ_t² per token (Min-K%++).

:class:`PairBook` deduplicates pairs so that one evaluation never scores the same
sequence twice; :func:`answer_probabilities` and :func:`truth_ratios` are conveniences
for the app's Playground / Probe pages.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from msa_core.eval import metrics as M
from msa_core.progress import Progress, report
from msa_core.prompts import encode_qa

Pair = tuple[Sequence[int], Sequence[int]]
WANTS = ("nll", "token_logprobs", "argmax", "vocab_stats")
# Bound on (continuation tokens × vocabulary) fp32 elements materialised at once (~256 MB).
_CHUNK_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True)
class PairScores:
    """Per-pair statistics, in the order the pairs were given (None when not asked for)."""

    nll: list[float]
    n_tokens: list[int]
    token_logprobs: Optional[list[np.ndarray]] = None
    argmax_correct: Optional[list[np.ndarray]] = None
    mu: Optional[list[np.ndarray]] = None
    var: Optional[list[np.ndarray]] = None

    @property
    def prob(self) -> list[float]:
        """p = exp(−mean NLL) per pair."""
        return [math.exp(-x) for x in self.nll]


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def default_max_length(model: Any) -> Optional[int]:
    """The model's ``max_position_embeddings`` when its config has one."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 1 else None


def _prepare(pairs: Sequence[Pair], max_length: Optional[int]) -> list[tuple[list[int], list[int]]]:
    out = []
    for i, (p, c) in enumerate(pairs):
        p, c = [int(t) for t in p], [int(t) for t in c]
        if not p:  # nothing predicts the first token: it becomes the context
            p, c = c[:1], c[1:]
        if not c:
            raise ValueError(f"pair {i}: the continuation has no scorable tokens")
        if max_length is not None and len(p) + len(c) > max_length:
            if max_length < 2:
                raise ValueError(f"max_length must be >= 2, got {max_length}")
            c = c[: max_length - 1]
            p = p[-(max_length - len(c)) :]
        out.append((p, c))
    return out


_LOGITS_TO_KEEP: dict[type, bool] = {}  # model class → whether its forward takes logits_to_keep


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    cls = type(model)
    known = _LOGITS_TO_KEEP.get(cls)
    if known is None:
        try:
            known = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            known = False
        _LOGITS_TO_KEEP[cls] = known
    return known



@torch.inference_mode()
def score_pairs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 16,
    want: Iterable[str] = ("nll",),
    padding_side: Optional[str] = None,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> PairScores:
    """Teacher-forced statistics of each continuation given its prompt (see the module docstring).

    ``pairs``: (prompt_ids, continuation_ids) lists of ints; an empty prompt makes the first
    continuation token the context. ``padding_side``: "right" (default) or "left".
    ``max_length``: longer sequences keep the head of the continuation and the tail of the
    prompt. The model is used as given (it should be in eval mode).
    """
    wanted = set(want) | {"nll"}
    unknown = wanted - set(WANTS)
    if unknown:
        raise ValueError(f"score_pairs: unknown statistics {sorted(unknown)}; choose from {WANTS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    side = padding_side or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    seqs = _prepare(pairs, max_length)
    n = len(seqs)
    nll = [0.0] * n
    tlp: list[Any] = [None] * n
    corr: list[Any] = [None] * n
    mus: list[Any] = [None] * n
    vars_: list[Any] = [None] * n
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    order = sorted(range(n), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    done = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        lengths = [len(seqs[i][0]) + len(seqs[i][1]) for i in idx]
        width = max(lengths)
        ids = torch.full((len(idx), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        rows, cols, targets, owners = [], [], [], []
        for r, i in enumerate(idx):
            p, c = seqs[i]
            seq = p + c
            off = width - len(seq) if side == "left" else 0
            ids[r, off : off + len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, off : off + len(seq)] = 1
            first = off + len(p) - 1  # the logit at position t predicts token t + 1
            rows.extend([r] * len(c))
            cols.extend(range(first, first + len(c)))
            targets.extend(c)
            owners.append((i, len(c)))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device),
                  "use_cache": False}
        c_t = torch.tensor(cols)
        if _accepts_logits_to_keep(model):
            # Project to the vocabulary only the columns that hold some row's continuation
            # (the model's own head, so any logit scaling or soft-capping still applies).
            keep, c_t = torch.unique(c_t, return_inverse=True)
            inputs["logits_to_keep"] = keep.to(device)
        logits = model(**inputs).logits
        vocab = logits.shape[-1]
        r_t = torch.tensor(rows, device=logits.device)
        c_t = c_t.to(logits.device)
        y_t = torch.tensor(targets, device=logits.device)
        step = max(1, _CHUNK_ELEMENTS // vocab)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("lp", "ok", "mu", "var")}
        for s in range(0, len(rows), step):
            lg = logits[r_t[s : s + step], c_t[s : s + step]].float()
            logp = torch.log_softmax(lg, dim=-1)
            y = y_t[s : s + step]
            parts["lp"].append(logp.gather(-1, y[:, None])[:, 0])
            if "argmax" in wanted:
                parts["ok"].append(lg.argmax(-1) == y)
            if "vocab_stats" in wanted:
                pr = logp.exp()
                mu = (pr * logp).sum(-1)
                parts["mu"].append(mu)
                parts["var"].append((pr * logp.square()).sum(-1) - mu.square())
        cat = {
            k: torch.cat(v).double().cpu().numpy() if k != "ok" else torch.cat(v).cpu().numpy()
            for k, v in parts.items()
            if v
        }
        o = 0
        for i, length in owners:
            lp = cat["lp"][o : o + length]
            nll[i] = float(-lp.mean())
            if "token_logprobs" in wanted:
                tlp[i] = lp.copy()
            if "argmax" in wanted:
                corr[i] = cat["ok"][o : o + length].astype(bool)
            if "vocab_stats" in wanted:
                mus[i] = cat["mu"][o : o + length]
                vars_[i] = cat["var"][o : o + length]
            o += length
        done += len(idx)
        report(progress, done / max(1, n), f"scored {done}/{n} sequences")
    return PairScores(
        nll=nll,
        n_tokens=[len(c) for _, c in seqs],
        token_logprobs=tlp if "token_logprobs" in wanted else None,
        argmax_correct=corr if "argmax" in wanted else None,
        mu=mus if "vocab_stats" in wanted else None,
        var=vars_ if "vocab_stats" in wanted else None,
    )


class PairBook:
    """Collects (prompt, continuation) pairs, giving each distinct sequence one index."""

    def __init__(self) -> None:
        self.pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}

    def add(self, prompt: Sequence[int], cont: Sequence[int]) -> int:
        key = (tuple(prompt), tuple(cont))
        if key not in self._index:
            self._index[key] = len(self.pairs)
            self.pairs.append(key)
        return self._index[key]

    def __len__(self) -> int:
        return len(self.pairs)


_Encoded = tuple[list[int], list[int]]
_ENCODINGS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, Optional[str]], _Encoded]] = (
    weakref.WeakKeyDictionary()
)


def encode_qa_cached(
    tokenizer: Any, question: str, answer: str, prompt_format: Optional[str] = None
) -> tuple[list[int], list[int]]:
    """:func:`msa_core.prompts.encode_qa` in ``prompt_format``, memoised per tokenizer (slider moves
    re-use encodings)."""
    try:
        cache = _ENCODINGS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return encode_qa(tokenizer, question, answer, prompt_format)
    key = (question, answer, prompt_format)
    if key not in cache:
        if len(cache) > 200_000:
            cache.clear()
        cache[key] = encode_qa(tokenizer, question, answer, prompt_format)
    return cache[key]


def answer_probabilities(
    model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str], *, batch_size: int = 16,
    prompt_format: Optional[str] = None,
) -> list[float]:
    """p(answer | question) = exp(−mean NLL over the answer tokens + EOS), one per pair."""
    if len(questions) != len(answers):
        raise ValueError(f"answer_probabilities: {len(questions)} questions but {len(answers)} answers")
    pairs = [encode_qa_cached(tokenizer, q, a, prompt_format) for q, a in zip(questions, answers)]
    return score_pairs(model, tokenizer, pairs, batch_size=batch_size).prob


ItemLike = Union[Mapping[str, Any], Any]


def _item_fields(item: ItemLike, i: int) -> tuple[str, str, Sequence[str]]:
    get = item.get if isinstance(item, Mapping) else (lambda k, d=None: getattr(item, k, d))
    q = get("question")
    true = get("paraphrased_answer") or get("answer")
    wrong = get("perturbed_answer", None) or get("perturbed_answers", None)
    if not q or not true:
        raise KeyError(f"truth_ratios: item {i} needs 'question' and 'paraphrased_answer' or 'answer'")
    if not wrong:
        raise KeyError(f"truth_ratios: item {i} needs a non-empty 'perturbed_answer' list")
    return q, true, list(wrong)


def truth_ratios(
    model: Any, tokenizer: Any, items: Sequence[ItemLike], *, batch_size: int = 16, prompt_format: Optional[str] = None
) -> list[float]:
    """TR = P_pert / P_true per item (true = paraphrased answer if present, else the answer).

    ``items``: dicts or objects with question, paraphrased_answer|answer and perturbed_answer(s).
    """
    book = PairBook()
    refs = []
    for i, item in enumerate(items):
        q, true, wrong = _item_fields(item, i)
        wrong_rows = [book.add(*encode_qa_cached(tokenizer, q, w, prompt_format)) for w in wrong]
        refs.append((book.add(*encode_qa_cached(tokenizer, q, true, prompt_format)), wrong_rows))
    scores = score_pairs(model, tokenizer, book.pairs, batch_size=batch_size)
    return [M.truth_ratio(scores.nll[t], [scores.nll[w] for w in ws]) for t, ws in refs]
