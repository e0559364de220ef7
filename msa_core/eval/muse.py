"""MUSE evaluation of one model: Min-K% / Min-K%++ membership AUC and PrivLeak (fast tier),
VerbMem and KnowMem forget/retain (full tier, greedy generation).

- Min-K% (k = 0.4) and Min-K%++ are computed from one teacher-forced pass over each
  privleak text (BOS as the only context); by default the last text token is left out of the
  score as open-unlearning's code does, ``min_k: muse-paper`` scores every text token
  (:mod:`msa_core.conventions`). The AUC of forget vs holdout texts is in MUSE's orientation
  (≈0 memorised, ≈0.5 never seen).
- PrivLeak needs the reference (retrained) model's AUC, from its own evaluation or a
  given number; without one it is not reported.
- VerbMem: 128-token greedy continuation of each forget prompt, ROUGE-L F1 vs ``gt``.
- KnowMem: few-shot prompt from the ``_icl`` examples, 32 new tokens, cut at "\\n\\n" /
  "\\nQuestion" / "Question:", ROUGE-L F1 vs the answer. The prompt ends in "Answer:"
  (no trailing space), the QA format every model here is trained with. Long prompts are
  trimmed by the ``knowmem_prompt`` convention: open-unlearning's first 512 tokens (default)
  or the last tokens that fit the model's positions (``fit-context``).
"""

from __future__ import annotations

from typing import Any, Optional

from msa_core.conventions import DEFAULT_CONVENTIONS, OPEN_UNLEARNING_KNOWMEM_MAX_TOKENS
from msa_core.eval import metrics as M
from msa_core.eval.data import MuseData
from msa_core.eval.results import MetricValue
from msa_core.eval.scoring import PairBook, score_pairs
from msa_core.progress import Progress, report, sub_progress
from msa_core.prompts import encode_continuation, encode_prompt

MINK_K = 0.4
VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32


def _head(values: Optional[tuple], subset: Optional[int]) -> Optional[tuple]:
    if values is None or subset is None:
        return values
    return values[: max(0, int(subset))]


def mink_scores(model: Any, tokenizer: Any, texts: list[str], **options: Any) -> tuple[list[float], list[float]]:
    """(Min-K% scores, Min-K%++ scores) of ``texts``, one forward pass each (deduplicated);
    ``options`` are :func:`pair_mink_scores`' keywords (k, batch_size, max_length, progress, convention)."""
    book = PairBook()
    idx = [book.add(*encode_continuation(tokenizer, "", t)) for t in texts]
    return pair_mink_scores(model, tokenizer, book.pairs, idx, **options)


def pair_mink_scores(
    model: Any,
    tokenizer: Any,
    pairs: list,
    idx: list[int],
    *,
    k: float = MINK_K,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
    convention: str = DEFAULT_CONVENTIONS["min_k"],
) -> tuple[list[float], list[float]]:
    """(Min-K% scores, Min-K%++ scores) of the continuations ``pairs[i]`` for ``i`` in ``idx``.

    A text left with no scored token (one token under the open-unlearning convention) scores 0,
    as open-unlearning's attacks do.
    """
    sc = score_pairs(
        model,
        tokenizer,
        pairs,
        batch_size=batch_size,
        want=("token_logprobs", "vocab_stats"),
        max_length=max_length,
        progress=progress,
    )
    mink, minkpp = [], []
    for i in idx:
        lp = M.min_k_tokens(sc.token_logprobs[i], convention)  # type: ignore[index]
        n = lp.size
        mink.append(M.min_k_score(lp, k) if n else 0.0)
        minkpp.append(M.min_k_pp_score(lp, sc.mu[i][:n], sc.var[i][:n], k) if n else 0.0)  # type: ignore[index]
    return mink, minkpp


def _head_prompt(tokenizer: Any, prompt: str, budget: int) -> str:
    """Keep the first ``budget`` tokens of a long prompt (a tokenizer's right-side truncation,
    as open-unlearning's QADataset does with ``max_length``)."""
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) <= budget:
        return prompt
    return tokenizer.decode(ids[:budget], skip_special_tokens=True)


def knowmem_prompt(tokenizer: Any, prompt: str, convention: str, max_length: Optional[int]) -> str:
    """A KnowMem few-shot prompt trimmed by the ``knowmem_prompt`` convention (module docstring)."""
    if convention == "open-unlearning":
        return _head_prompt(tokenizer, prompt, OPEN_UNLEARNING_KNOWMEM_MAX_TOKENS)
    if convention == "fit-context":
        budget = None if max_length is None else max(1, max_length - KNOWMEM_MAX_NEW_TOKENS)
        return _fit_prompt(tokenizer, prompt, budget)
    raise ValueError(f"knowmem_prompt convention must be 'open-unlearning' or 'fit-context', got {convention!r}")


def _fit_prompt(tokenizer: Any, prompt: str, budget: Optional[int]) -> str:
    """Keep the last ``budget`` tokens of a long prompt (models cannot attend past their positions)."""
    if budget is None or budget <= 0:
        return prompt
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) <= budget:
        return prompt
    return tokenizer.decode(ids[-budget:], skip_special_tokens=True)


def evaluate_muse(
    model: Any,
    tokenizer: Any,
    data: MuseData,
    *,
    tier: str = "fast",
    subset: Optional[int] = None,
    reference_auc: Optional[float] = None,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
    conventions: Optional[dict[str, str]] = None,
) -> tuple[dict[str, MetricValue], dict[str, list[str]]]:
    """MUSE metrics of ``model`` on ``data``: (metrics by name, generations by task).

    ``conventions``: :mod:`msa_core.conventions` choices (defaults: open-unlearning's).
    """
    conv = {**DEFAULT_CONVENTIONS, **(conventions or {})}
    out: dict[str, MetricValue] = {}
    gens: dict[str, list[str]] = {}
    fast_end = 1.0 if tier == "fast" else 0.3
    forget = _head(data.privleak_forget, subset)
    holdout = _head(data.privleak_holdout, subset)
    if forget and holdout:
        texts = list(forget) + list(holdout)
        mink, minkpp = mink_scores(
            model, tokenizer, texts, batch_size=max(1, batch_size // 2), max_length=max_length,
            progress=sub_progress(progress, 0.0, fast_end), convention=conv["min_k"],
        )
        nf = len(forget)
        auc = M.muse_mia_auc(mink[:nf], mink[nf:])
        out["muse_mink_auc"] = MetricValue("muse_mink_auc", auc, mink)
        aucpp = M.muse_mia_auc(minkpp[:nf], minkpp[nf:])
        out["muse_minkpp_auc"] = MetricValue("muse_minkpp_auc", aucpp, minkpp)
        if reference_auc is not None:
            out["muse_privleak"] = MetricValue("muse_privleak", M.privleak(auc, reference_auc))
    if tier != "full":
        report(progress, 1.0, "MUSE done")
        return out, gens

    from msa_core.generation import generate_text

    verb = _head(data.verbmem_forget, subset)
    if verb:
        report(progress, 0.3, "MUSE VerbMem: generating continuations")
        # leave room for the continuation inside the model's positions (half of them at least for the prompt)
        budget = None if max_length is None else max(max_length - VERBMEM_MAX_NEW_TOKENS, max_length // 2)
        prompts = [_fit_prompt(tokenizer, p, budget) for p, _ in verb]
        conts = generate_text(model, tokenizer, prompts, max_new_tokens=VERBMEM_MAX_NEW_TOKENS, batch_size=batch_size,
                              progress=sub_progress(progress, 0.3, 0.6))
        scores = [M.rouge_l_f1(gt, c) for (_, gt), c in zip(verb, conts)]
        out["muse_verbmem_forget"] = MetricValue("muse_verbmem_forget", M.mean(scores), scores)
        gens["verbmem_forget"] = conts
    for n, (key, qa, icl) in enumerate(
        (
            ("forget", _head(data.knowmem_forget, subset), data.knowmem_forget_icl),
            ("retain", _head(data.knowmem_retain, subset), data.knowmem_retain_icl),
        )
    ):
        if not qa:
            continue
        report(progress, 0.6 + 0.2 * n, f"MUSE KnowMem {key}: generating answers")
        prompts = [knowmem_prompt(tokenizer, M.few_shot_prompt(icl or (), q), conv["knowmem_prompt"], max_length)
                   for q, _ in qa]
        answers = generate_text(
            model, tokenizer, prompts, max_new_tokens=KNOWMEM_MAX_NEW_TOKENS, batch_size=batch_size,
            stop=list(M.MUSE_STOPS), progress=sub_progress(progress, 0.6 + 0.2 * n, 0.8 + 0.2 * n),
        )
        answers = [M.muse_cut(a) for a in answers]
        scores = [M.rouge_l_f1(a, g) for (_, a), g in zip(qa, answers)]
        name = f"muse_knowmem_{key}"
        out[name] = MetricValue(name, M.mean(scores), scores)
        gens[f"knowmem_{key}"] = answers
    report(progress, 1.0, "MUSE done")
    return out, gens
