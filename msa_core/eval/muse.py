"""MUSE evaluation of one model: Min-K% / Min-K%++ membership AUC and PrivLeak (fast tier),
VerbMem and KnowMem forget/retain (full tier, greedy generation).

- Min-K% (k = 0.4) and Min-K%++ are computed from one teacher-forced pass over each
  privleak text (BOS as the only context, so every text token is scored); the AUC of
  forget vs holdout texts is in MUSE's orientation (≈0 memorised, ≈0.5 never seen).
- PrivLeak needs the reference (retrained) model's AUC, from its own evaluation or a
  given number; without one it is not reported.
- VerbMem: 128-token greedy continuation of each forget prompt, ROUGE-L F1 vs ``gt``.
- KnowMem: few-shot prompt from the ``_icl`` examples, 32 new tokens, cut at "\\n\\n" /
  "\\nQuestion" / "Question:", ROUGE-L F1 vs the answer. The prompt ends in "Answer:"
  (no trailing space), the QA format every model here is trained with.
"""

from __future__ import annotations

from typing import Any, Optional

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


def mink_scores(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    k: float = MINK_K,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> tuple[list[float], list[float]]:
    """(Min-K% scores, Min-K%++ scores) of ``texts``, one forward pass each (deduplicated)."""
    book = PairBook()
    idx = [book.add(*encode_continuation(tokenizer, "", t)) for t in texts]
    sc = score_pairs(
        model,
        tokenizer,
        book.pairs,
        batch_size=batch_size,
        want=("token_logprobs", "vocab_stats"),
        max_length=max_length,
        progress=progress,
    )
    mink = [M.min_k_score(sc.token_logprobs[i], k) for i in idx]  # type: ignore[index]
    minkpp = [M.min_k_pp_score(sc.token_logprobs[i], sc.mu[i], sc.var[i], k) for i in idx]  # type: ignore[index]
    return mink, minkpp


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
) -> tuple[dict[str, MetricValue], dict[str, list[str]]]:
    """MUSE metrics of ``model`` on ``data``: (metrics by name, generations by task)."""
    out: dict[str, MetricValue] = {}
    gens: dict[str, list[str]] = {}
    fast_end = 1.0 if tier == "fast" else 0.3
    forget = _head(data.privleak_forget, subset)
    holdout = _head(data.privleak_holdout, subset)
    if forget and holdout:
        texts = list(forget) + list(holdout)
        mink, minkpp = mink_scores(
            model, tokenizer, texts, batch_size=max(1, batch_size // 2), max_length=max_length,
            progress=sub_progress(progress, 0.0, fast_end),
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
        prompts = [M.few_shot_prompt(icl or (), q) for q, _ in qa]
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
