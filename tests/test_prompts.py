"""Prompt formats (msa_core.prompts): exact token ids for a Llama-3-style chat template with
open-unlearning's system prompt, the plain formats, and the format used and recorded by evaluation."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_experiment,
    make_model,
    write_tofu,
)
from tiny import CORPUS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from msa_core.eval.settings import eval_settings
from msa_core.prompts import (
    check_prompt_format,
    encode_qa,
    format_name,
    qa_prompt,
)

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# A Llama-3.2-Instruct-style chat template (system block with the knowledge and today's date lines,
# content trimmed, turns closed by <|eot_id|>), written for this test.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with Llama-3's special tokens, BOS post-processor and chat template;
    EOS is <|eot_id|> as in Llama-3 Instruct."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    bos = "<|begin_of_text|>"
    tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>")
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


Q, A = "Where was Ana Lenz born?", "Ana Lenz was born in Velmora."
OU_PROMPT_TEXT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 10 Apr 2025\n\n"
    "You are a helpful assistant.<|eot_id|>"
    f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def _ids(tok: PreTrainedTokenizerFast, text: str, special: bool = False) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def test_open_unlearning_tofu_format_gives_the_exact_llama3_token_ids_with_the_system_prompt():
    tok = llama3_tokenizer()
    assert qa_prompt(tok, Q, "open-unlearning-tofu") == OU_PROMPT_TEXT
    prompt_ids, answer_ids = encode_qa(tok, Q, A, "open-unlearning-tofu")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert prompt_ids == _ids(tok, OU_PROMPT_TEXT)
    assert prompt_ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>") and prompt_ids.count(prompt_ids[0]) == 1
    # the assistant turn's <|eot_id|> is the EOS: it ends the answer once, no second EOS appended
    assert answer_ids == _ids(tok, A) + [eot]
    assert prompt_ids + answer_ids == _ids(tok, OU_PROMPT_TEXT + A + "<|eot_id|>")


def test_chat_format_has_no_system_prompt_and_plain_formats_are_literal():
    tok = llama3_tokenizer()
    chat = qa_prompt(tok, Q, "chat")
    assert "You are a helpful assistant." not in chat and "Today Date: 10 Apr 2025" in chat
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    p, a = encode_qa(tok, Q, A, "chat")
    assert p == _ids(tok, chat) and a == _ids(tok, A) + [tok.eos_token_id]
    assert qa_prompt(tok, Q) == chat  # "auto" with a chat template is "chat"

    plain_tok = llama3_tokenizer()
    plain_tok.chat_template = None
    assert qa_prompt(plain_tok, Q) == f"Question: {Q}\nAnswer:"
    p, a = encode_qa(plain_tok, Q, A, "plain")
    assert p == _ids(plain_tok, f"Question: {Q}\nAnswer:", special=True) and a == _ids(plain_tok, " " + A) + [
        plain_tok.eos_token_id]
    # open-unlearning's base-model tags: "Question: …\nAnswer: " + answer, tokenised once
    ou_text = f"Question: {Q}\nAnswer: "
    assert qa_prompt(plain_tok, Q, "open-unlearning-tofu") == ou_text
    p, a = encode_qa(plain_tok, Q, A, "open-unlearning-tofu")
    whole = _ids(plain_tok, ou_text + A, special=True) + [plain_tok.eos_token_id]
    n_prompt = len(_ids(plain_tok, ou_text, special=True))
    # open-unlearning scores the whole tokenisation with the prompt's token count masked, even where
    # "Answer: " + "Ana" merge differently at the boundary (here " Ana" is one token)
    assert p + a == whole and len(p) == n_prompt and p != _ids(plain_tok, ou_text, special=True)


def test_llama2_chat_templates_get_open_unlearning_inst_tags_without_a_system_prompt():
    tok = llama3_tokenizer()
    tok.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    assert format_name(tok, "open-unlearning-tofu") == "open-unlearning-tofu/llama2-chat"
    text = f"[INST] {Q} [/INST]"
    assert qa_prompt(tok, Q, "open-unlearning-tofu") == text
    p, a = encode_qa(tok, Q, A, "open-unlearning-tofu")
    assert p + a == _ids(tok, text + A, special=True) + [tok.eos_token_id]
    assert len(p) == len(_ids(tok, text, special=True))


def test_format_names_are_recorded_and_unknown_ones_refused():
    tok = llama3_tokenizer()
    assert format_name(tok, None) == "chat" and format_name(tok, "open-unlearning-tofu") == "open-unlearning-tofu"
    tok.chat_template = None
    assert format_name(tok, "auto") == "plain"
    assert format_name(tok, "open-unlearning-tofu") == "open-unlearning-tofu/plain"
    with pytest.raises(ValueError, match="no chat template"):
        format_name(tok, "chat")
    with pytest.raises(ValueError, match="prompt_format.*'llama'"):
        check_prompt_format("llama")


def test_evaluation_scores_and_records_the_experiment_prompt_format(tmp_path):
    from msa_core.eval.run import evaluate_model

    tok = llama3_tokenizer()
    exp = make_experiment(tmp_path, tofu=write_tofu(tmp_path / "tofu", n_forget=3))
    ou = replace(exp, prompt_format="open-unlearning-tofu")
    model = make_model(len(tok), seed=3)
    res = evaluate_model(model, tok, ou, tier="fast", benchmark="tofu")
    assert res.settings["template"] == "open-unlearning-tofu"
    auto = eval_settings(exp, tok, benchmark="tofu")
    assert auto.template == "chat" and auto.key != eval_settings(ou, tok, benchmark="tofu").key
    rows = json.loads((exp.data.tofu / "forget10_perturbed.json").read_text())
    for r, p_got in zip(rows, res.metrics["forget_prob"].per_item):
        # the literal open-unlearning prompt text for this question, scored one sequence at a time in float64
        text = OU_PROMPT_TEXT.replace(Q, r["question"])
        p_ids, a_ids = _ids(tok, text), _ids(tok, r["answer"]) + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + a_ids])).logits[0].double()
        logp = torch.log_softmax(logits[len(p_ids) - 1: -1], -1).gather(-1, torch.tensor(a_ids)[:, None])
        assert p_got == pytest.approx(math.exp(float(logp.mean())), rel=2e-5)


def test_llama2_chat_prompts_equal_the_official_tofu_logs_prompts(shared_data):
    """The original TOFU eval logs (Llama-2-7b) record each prompt: the open-unlearning format gives the same text."""
    logs = shared_data / "tofu" / "eval_results" / "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01" / "ds_size300"
    agg = json.loads((logs / "eval_log_aggregated.json").read_text())
    tok = llama3_tokenizer()
    tok.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    for log, data in (("eval_log_forget.json", "forget10_perturbed.json"), ("eval_log.json", "retain_perturbed.json")):
        rows = json.loads((shared_data / "tofu" / data).read_text())
        for k in ("0", "1", "299"):
            logged_prompt = agg[log]["generated_text"][k][0]
            assert qa_prompt(tok, rows[int(k)]["question"], "open-unlearning-tofu") == logged_prompt, (log, k)
