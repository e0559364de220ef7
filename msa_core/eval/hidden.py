"""Cheap probes that point at hidden knowledge without training (the Probe page's "is it hidden?").

Each probe asks one model about forget items in a way the unlearning may not have covered;
a model that still knows the fact somewhere scores like the corrupted model, one that never
learned it like the reference. They are hints, not proof (the relearning attack in
:mod:`msa_core.rtt` is the stronger test):

- **perturbed rank** — the gold answer's rank (1 = best) and mean token log-probability
  among the perturbed (wrong) answers; the paraphrased answer stands in for the gold one
  when the item has it, since TOFU's perturbed answers are rewrites of that sentence.
- **paraphrase** — p(gold) when the question is asked in other words (TOFU's
  ``paraphrased_question``; items without one are skipped and counted).
- **few-shot** — p(gold) when the question follows a few retained facts as worked examples
  (in-context prompting can wake suppressed knowledge).
- **logit lens** — the gold answer's first token read out of each layer's hidden state
  (final norm + LM head applied to the residual stream at the last prompt position):
  knowledge removed only near the output still shows in middle layers.

Functions take a model and tokenizer (the caller picks the target and holds the engine's
lock, e.g. with :func:`msa_core.targets.model_for`); :func:`hidden_probes` runs all four on
several targets. Nothing is memoised here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from msa_core.engine import Engine
    from msa_core.targets import Target

PROBE_EXPLANATIONS = {
    "perturbed_rank": "Rank 1 = the model still prefers the true answer over every wrong one: the fact is still "
                      "ranked, even if it is no longer said.",
    "paraphrase": "A fact removed only for the trained wording comes back when the question is asked differently.",
    "few_shot": "A few retained facts as examples before the question: in-context prompting can wake a "
                "suppressed fact (p(gold) rising towards the corrupted model's).",
    "logit_lens": "The gold answer's first token read out of every layer: a fact hidden only near the output "
                  "still ranks high in middle layers.",
}
# How many retained facts make the few-shot prompt (MUSE's KnowMem uses 3 examples as well).
DEFAULT_SHOTS = 3


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def _mean_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
    """Mean token log-probability of each continuation (−mean NLL, TOFU's normalisation)."""
    from msa_core.eval.scoring import score_pairs

    if not pairs:
        return []
    return [-x for x in score_pairs(model, tokenizer, pairs).nll]


def perturbed_ranks(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], *,
                    prompt_format: Optional[str] = None) -> list[Optional[dict[str, Any]]]:
    """Per item: ``rank`` of the gold (paraphrased) answer among it and the perturbed answers (1 = best),
    ``of`` (how many answers), ``gold_logprob`` and ``best_wrong_logprob`` (mean token log-probabilities);
    None for an item without perturbed answers."""
    from msa_core.eval.scoring import encode_qa_cached

    pairs: list[tuple[list[int], list[int]]] = []
    spans: list[Optional[tuple[int, int]]] = []
    for item in items:
        wrong = list(_get(item, "perturbed_answers") or _get(item, "perturbed_answer") or [])
        if not wrong:
            spans.append(None)
            continue
        q, gold = _get(item, "question"), _get(item, "paraphrased_answer") or _get(item, "answer")
        start = len(pairs)
        pairs += [encode_qa_cached(tokenizer, q, a, prompt_format) for a in [gold] + wrong]
        spans.append((start, len(pairs)))
    lp = _mean_logprobs(model, tokenizer, pairs)
    out: list[Optional[dict[str, Any]]] = []
    for span in spans:
        if span is None:
            out.append(None)
            continue
        gold, wrong = lp[span[0]], lp[span[0] + 1: span[1]]
        out.append({"rank": 1 + sum(w > gold for w in wrong), "of": 1 + len(wrong), "gold_logprob": gold,
                    "best_wrong_logprob": max(wrong)})
    return out


def paraphrase_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], *,
                             prompt_format: Optional[str] = None) -> list[Optional[dict[str, float]]]:
    """Per item: p(gold | question) and p(gold | paraphrased question); None without a paraphrased question."""
    from msa_core.eval.scoring import encode_qa_cached

    pairs, where = [], []
    for item in items:
        para = _get(item, "paraphrased_question")
        if not para:
            where.append(None)
            continue
        where.append(len(pairs))
        gold = _get(item, "answer")
        pairs += [encode_qa_cached(tokenizer, _get(item, "question"), gold, prompt_format),
                  encode_qa_cached(tokenizer, para, gold, prompt_format)]
    lp = _mean_logprobs(model, tokenizer, pairs)
    return [None if w is None else {"p_question": math.exp(lp[w]), "p_paraphrase": math.exp(lp[w + 1])}
            for w in where]


def few_shot_prompt(tokenizer: PreTrainedTokenizerBase, shots: Sequence[tuple[str, str]], question: str,
                    prompt_format: Optional[str] = None) -> str:
    """``question`` after ``shots`` (question, answer) worked examples, in the QA format: plain text
    blocks in the plain format, else earlier user/assistant turns of the chat template."""
    from msa_core.prompts import PINNED_DATE, PLAIN, answer_text, format_name, qa_prompt

    if format_name(tokenizer, prompt_format) == PLAIN:
        blocks = "".join(f"{qa_prompt(tokenizer, q, PLAIN)}{answer_text(tokenizer, a, PLAIN)}\n\n" for q, a in shots)
        return blocks + qa_prompt(tokenizer, question, PLAIN)
    messages = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": question})
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             date_string=PINNED_DATE))


def few_shot_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any],
                           shots: Sequence[tuple[str, str]], *,
                           prompt_format: Optional[str] = None) -> list[dict[str, float]]:
    """Per item: p(gold | question) and p(gold | ``shots`` examples + question)."""
    from msa_core.eval.scoring import encode_qa_cached
    from msa_core.prompts import answer_text, encode_continuation

    if not shots:
        raise ValueError("few-shot probe: no retained facts to build the examples from")
    pairs = []
    for item in items:
        q, gold = _get(item, "question"), _get(item, "answer")
        pairs.append(encode_qa_cached(tokenizer, q, gold, prompt_format))
        pairs.append(encode_continuation(tokenizer, few_shot_prompt(tokenizer, shots, q, prompt_format),
                                         answer_text(tokenizer, gold, prompt_format), add_eos=True))
    lp = _mean_logprobs(model, tokenizer, pairs)
    return [{"p_question": math.exp(lp[2 * i]), "p_few_shot": math.exp(lp[2 * i + 1])} for i in range(len(items))]


def _final_norm(model: PreTrainedModel) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, model):
        for name in ("norm", "final_layernorm", "ln_f"):
            module = getattr(owner, name, None)
            if isinstance(module, torch.nn.Module):
                return module
    raise ValueError(f"logit lens: {type(model).__name__} has no final norm (norm / final_layernorm / ln_f) "
                     "to read the layers through")


@torch.inference_mode()
def logit_lens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Any], *,
               prompt_format: Optional[str] = None) -> list[list[dict[str, float]]]:
    """Per item, per layer (1 … L): ``rank`` (1 = top) and ``prob`` of the gold answer's first token
    read from the hidden state at the last prompt position through the final norm and LM head.
    The last layer's readout is the model's own output distribution."""
    from msa_core.eval.scoring import encode_qa_cached

    norm, head = _final_norm(model), model.get_output_embeddings()
    device = next(model.parameters()).device
    out = []
    for item in items:
        prompt, answer = encode_qa_cached(tokenizer, _get(item, "question"), _get(item, "answer"), prompt_format)
        target = int(answer[0])
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        res = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        states = res.hidden_states  # embeddings, then one per layer; the last is already normed
        rows = []
        for layer in range(1, len(states)):
            if layer == len(states) - 1:
                logits = res.logits[0, -1]
            else:
                logits = head(norm(states[layer][:, -1]))[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            rows.append({"layer": layer, "rank": 1 + int((logp > logp[target]).sum()),
                         "prob": float(logp[target].exp())})
        out.append(rows)
    return out


@dataclass
class HiddenProbes:
    """The four probes on several models: per model (label → values), parallel to ``items``."""

    models: list[str]
    perturbed_rank: dict[str, list[Optional[dict[str, Any]]]] = field(default_factory=dict)
    paraphrase: dict[str, list[Optional[dict[str, float]]]] = field(default_factory=dict)
    few_shot: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    logit_lens: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    shots: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """One row per model: mean gold rank and share ranked first, mean gold log-prob, mean p(gold)
        asked plainly / paraphrased / few-shot, and the logit lens's best rank and its layer (means over items)."""
        def mean(values: Sequence[float]) -> Optional[float]:
            values = [v for v in values if v is not None and math.isfinite(v)]
            return sum(values) / len(values) if values else None

        rows = []
        for m in self.models:
            ranks = [r for r in self.perturbed_rank.get(m, []) if r is not None]
            paras = [p for p in self.paraphrase.get(m, []) if p is not None]
            shots = self.few_shot.get(m, [])
            lens = self.logit_lens.get(m, [])
            per_layer = [mean([float(item[k]["prob"]) for item in lens]) for k in range(len(lens[0]))] if lens else []
            peak = max(range(len(per_layer)), key=lambda k: per_layer[k] or 0.0) if per_layer else None
            rows.append({
                "model": m,
                "gold_rank": mean([r["rank"] for r in ranks]),
                "gold_first": mean([float(r["rank"] == 1) for r in ranks]),
                "gold_logprob": mean([r["gold_logprob"] for r in ranks]),
                "p_question": mean([s["p_question"] for s in shots]),
                "p_paraphrase": mean([p["p_paraphrase"] for p in paras]),
                "paraphrased_items": len(paras),
                "p_few_shot": mean([s["p_few_shot"] for s in shots]),
                "lens_peak_layer": None if peak is None else peak + 1,
                "lens_peak_prob": None if peak is None else per_layer[peak],
                "lens_last_prob": per_layer[-1] if per_layer else None,
            })
        return rows


def hidden_probes(engine: Engine, targets: Mapping[str, Target], items: Sequence[Any],
                  retained: Sequence[Any], *, shots: int = DEFAULT_SHOTS) -> HiddenProbes:
    """Every probe for each ``targets`` model (label → target) on ``items``; the few-shot examples are
    the first ``shots`` of ``retained`` (retain-set items). KeyError names a missing side model."""
    from msa_core.targets import model_for

    fmt = engine.experiment.prompt_format
    examples = [(str(_get(r, "question")), str(_get(r, "answer"))) for r in list(retained)[:shots]]
    out = HiddenProbes(list(targets), shots=examples)
    for label, target in targets.items():
        with model_for(engine, target) as model:
            out.perturbed_rank[label] = perturbed_ranks(model, engine.tokenizer, items, prompt_format=fmt)
            out.paraphrase[label] = paraphrase_probabilities(model, engine.tokenizer, items, prompt_format=fmt)
            out.few_shot[label] = (few_shot_probabilities(model, engine.tokenizer, items, examples, prompt_format=fmt)
                                   if examples else [])
            out.logit_lens[label] = logit_lens(model, engine.tokenizer, items, prompt_format=fmt)
    return out
