"""How a question/answer pair becomes tokens: named prompt formats, one of which every caller uses.

Training (fine-tuning examples), teacher-forced scoring and generation all go through
these functions with the experiment's ``prompt_format`` (:data:`PROMPT_FORMATS`), so a
model is always asked in the format it was taught and the format is recorded with every
result (:func:`format_name` is what the evaluation settings store).

Formats:

- ``"auto"`` (default): ``"chat"`` when the tokenizer has a chat template, else ``"plain"``.
- ``"plain"``: ``"Question: {q}\\nAnswer:"``, the answer continuing as ``" {a}"``.
- ``"chat"``: the tokenizer's chat template, one user turn, no system prompt (Llama-3
  templates get a pinned date string so prompts are reproducible).
- ``"open-unlearning-tofu"``: open-unlearning's TOFU format (``src/data/utils.py``
  ``preprocess_chat_instance``; its model configs' ``template_args``). With a chat template:
  system prompt ``"You are a helpful assistant."`` (its Llama-3/Qwen/Phi configs), date string
  ``"10 Apr 2025"``, and the answer's tokens taken from the tokenised whole conversation after
  the prompt's tokens. Without one: its base-model tags ``"Question: {q}\\nAnswer: "`` with the
  answer appended and the whole text tokenised once; with a Llama-2 ``[INST]`` template, its
  Llama-2-7b-chat tags ``"[INST] {q} [/INST]"`` and no system prompt (the original TOFU models'
  format). Its generation settings are :data:`OPEN_UNLEARNING_TOFU_GENERATION`.

The EOS token ends every answer and counts as an answer token (open-unlearning convention;
it is appended unless the format's own turn end already is EOS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


PLAIN_PROMPT = "Question: {question}\nAnswer:"
# Llama-3 chat templates print today's date unless given one; pin it for reproducibility.
# The same string as open-unlearning's model configs (template_args.date_string).
PINNED_DATE = "10 Apr 2025"
# open-unlearning's template_args.system_prompt for its chat models (Llama-3.x Instruct, Qwen2.5, Phi-3.5, zephyr).
OPEN_UNLEARNING_SYSTEM_PROMPT = "You are a helpful assistant."
# open-unlearning's base-model (apply_chat_template: False) tags: user_start/end, asst_start.
OPEN_UNLEARNING_PLAIN = ("Question: ", "\n", "Answer: ")
# open-unlearning's Llama-2-7b-chat tags (configs/model/Llama-2-7b-chat-hf.yaml: apply_chat_template: False,
# no system prompt): the format of the original TOFU models and their published logs.
OPEN_UNLEARNING_LLAMA2_CHAT = ("[INST] ", " [/INST]", "")
# open-unlearning configs/generation/default.yaml: greedy, 200 new tokens, cut at EOS.
OPEN_UNLEARNING_TOFU_GENERATION = {"do_sample": False, "max_new_tokens": 200}

AUTO = "auto"
PLAIN = "plain"
CHAT = "chat"
OPEN_UNLEARNING_TOFU = "open-unlearning-tofu"
PROMPT_FORMATS = (AUTO, PLAIN, CHAT, OPEN_UNLEARNING_TOFU)
DEFAULT_PROMPT_FORMAT = AUTO


def check_prompt_format(value: Any, where: str = "prompt_format") -> str:
    """``value`` if it names a prompt format, else a ValueError naming ``where`` and the choices."""
    if value not in PROMPT_FORMATS:
        raise ValueError(f"{where}: unknown prompt format {value!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    return str(value)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_name(tokenizer: PreTrainedTokenizerBase, fmt: Optional[str] = None) -> str:
    """The concrete format ``fmt`` means for this tokenizer ("auto" → "chat" or "plain").

    This is what results record (``settings.template``), so an "auto" run stores the same
    key as one that named its format; "open-unlearning-tofu" records whether it used the
    chat template (``"open-unlearning-tofu"``, ``"…/plain"``, ``"…/llama2-chat"``).
    """
    fmt = check_prompt_format(DEFAULT_PROMPT_FORMAT if fmt is None else fmt)
    if fmt == AUTO:
        return CHAT if has_chat_template(tokenizer) else PLAIN
    if fmt == CHAT and not has_chat_template(tokenizer):
        raise ValueError("prompt_format 'chat' asked for, but the tokenizer has no chat template")
    if fmt == OPEN_UNLEARNING_TOFU and not has_chat_template(tokenizer):
        return f"{OPEN_UNLEARNING_TOFU}/{PLAIN}"
    if fmt == OPEN_UNLEARNING_TOFU and "[INST]" in str(tokenizer.chat_template):
        return f"{OPEN_UNLEARNING_TOFU}/llama2-chat"
    return fmt


def _ou_messages(tokenizer: PreTrainedTokenizerBase, question: str) -> list[dict[str, str]]:
    """open-unlearning's chat: its system prompt, then the user's question (no system turn
    for templates that reject one, as open-unlearning's gemma config has none)."""
    system = [{"role": "system", "content": OPEN_UNLEARNING_SYSTEM_PROMPT}]
    user = [{"role": "user", "content": question}]
    from jinja2.exceptions import TemplateError

    try:
        _render(tokenizer, system + user, add_generation_prompt=True)
    except TemplateError:
        return user
    return system + user


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, date_string=PINNED_DATE
    ))


def qa_prompt(tokenizer: PreTrainedTokenizerBase, question: str, fmt: Optional[str] = None) -> str:
    """The prompt text for ``question`` in format ``fmt`` (everything before the answer)."""
    name = format_name(tokenizer, fmt)
    if name == PLAIN:
        return PLAIN_PROMPT.format(question=question)
    if name == CHAT:
        return _render(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
    if name == OPEN_UNLEARNING_TOFU:
        return _render(tokenizer, _ou_messages(tokenizer, question), add_generation_prompt=True)
    start, end, asst = OPEN_UNLEARNING_LLAMA2_CHAT if name.endswith("/llama2-chat") else OPEN_UNLEARNING_PLAIN
    return f"{start}{question}{end}{asst}"


def answer_text(tokenizer: PreTrainedTokenizerBase, answer: str, fmt: Optional[str] = None) -> str:
    """The answer text as it follows the prompt (a leading space in the plain format)."""
    return " " + answer if format_name(tokenizer, fmt) == PLAIN else answer


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt string, with BOS when the tokenizer adds one."""
    # Chat templates already contain the BOS text; plain prompts get the tokenizer's default.
    add_special = not prompt.startswith(getattr(tokenizer, "bos_token", None) or "\0")
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; every answer must end with EOS")
    return int(tokenizer.eos_token_id)


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, question: str, answer: str, fmt: Optional[str] = None
) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) for a QA pair in format ``fmt``; answer_ids end with EOS.

    "plain" / "chat": prompt and answer are tokenised separately and concatenated, so the
    boundary between the masked prompt and the scored answer is exact. "open-unlearning-tofu"
    follows open-unlearning: the whole conversation (or prompt + answer text) is tokenised
    once, plus EOS unless its last token already is EOS (Llama-3 Instruct's ``<|eot_id|>``),
    and split after as many tokens as the prompt alone has.
    """
    name = format_name(tokenizer, fmt)
    eos = _eos(tokenizer)
    if name in (PLAIN, CHAT):
        prompt_ids = encode_prompt(tokenizer, qa_prompt(tokenizer, question, name))
        answer_ids = list(tokenizer(answer_text(tokenizer, answer, name), add_special_tokens=False)["input_ids"])
        return prompt_ids, answer_ids + [eos]
    if name == OPEN_UNLEARNING_TOFU:
        messages = _ou_messages(tokenizer, question)
        prompt = _render(tokenizer, messages, add_generation_prompt=True)
        whole = _render(tokenizer, messages + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
        # apply_chat_template(tokenize=True) tokenises the rendered text without adding special tokens.
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        chat_ids = list(tokenizer(whole, add_special_tokens=False)["input_ids"])
    else:
        prompt = qa_prompt(tokenizer, question, fmt)
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        chat_ids = list(tokenizer(prompt + answer, add_special_tokens=True)["input_ids"])
    if not chat_ids or chat_ids[-1] != eos:
        chat_ids.append(eos)
    # As open-unlearning: the scored sequence is the whole tokenisation, its first len(prompt) tokens
    # masked (when the prompt's own tokens merge differently at the boundary, so does this split).
    n = len(prompt_ids)
    if len(chat_ids) <= n:
        raise ValueError(f"question {question[:60]!r}: the answer has no tokens after the prompt in format {name!r}")
    return chat_ids[:n], chat_ids[n:]


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
