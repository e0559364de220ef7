"""How a question/answer pair becomes tokens: the one QA format used everywhere.

Training (demo fine-tuning), teacher-forced scoring and generation all go through
these functions, so the model is always asked in the format it was taught.

Format: the tokenizer's chat template when it has one (Llama-3 templates get a pinned
date string so prompts are reproducible), else ``"Question: {q}\\nAnswer:"`` with the
answer continuing as ``" {a}"``. The EOS token ends every answer and counts as an
answer token (open-unlearning convention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


PLAIN_PROMPT = "Question: {question}\nAnswer:"
# Llama-3 chat templates print today's date unless given one; pin it for reproducibility.
PINNED_DATE = "10 Apr 2025"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def qa_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The prompt text for ``question`` (everything before the answer)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            tokenize=False,
            add_generation_prompt=True,
            date_string=PINNED_DATE,
        )
    return PLAIN_PROMPT.format(question=question)


def answer_text(tokenizer: PreTrainedTokenizerBase, answer: str) -> str:
    """The answer text as it follows the prompt (a leading space in the plain format)."""
    if has_chat_template(tokenizer):
        return answer
    return " " + answer


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt string, with BOS when the tokenizer adds one."""
    # Chat templates already contain the BOS text; plain prompts get the tokenizer's default.
    add_special = not prompt.startswith(getattr(tokenizer, "bos_token", None) or "\0")
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def encode_qa(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) for a QA pair; answer_ids end with EOS.

    Prompt and answer are tokenised separately and concatenated, so the boundary
    between the masked prompt and the scored answer is exact.
    """
    prompt_ids = encode_prompt(tokenizer, qa_prompt(tokenizer, question))
    answer_ids = list(tokenizer(answer_text(tokenizer, answer), add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; every answer must end with EOS")
    return prompt_ids, answer_ids + [int(tokenizer.eos_token_id)]


def encode_continuation(
    tokenizer: PreTrainedTokenizerBase, prompt: str, continuation: str, *, add_eos: bool = False
) -> tuple[list[int], list[int]]:
    """(prompt_ids, continuation_ids) for raw text (MUSE-style prompts, few-shot, Min-K%).

    With an empty prompt the continuation is the whole text and BOS (if any) is the prompt.
    """
    prompt_ids = encode_prompt(tokenizer, prompt) if prompt else (
        [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
    )
    cont_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        cont_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids, cont_ids
