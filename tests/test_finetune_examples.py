"""msa_core.finetune.examples: QA training examples follow the experiment's prompt format."""

from __future__ import annotations

from test_prompts import OU_PROMPT_TEXT, A, Q, llama3_tokenizer

from msa_core.finetune.data import TrainingData
from msa_core.finetune.examples import IGNORE_INDEX, build_examples


def test_qa_examples_mask_the_open_unlearning_prompt_and_train_the_answer_and_eos():
    tok = llama3_tokenizer()
    data = TrainingData("forget", "qa", ((Q, A),), (), "sig")
    (ou,) = build_examples(tok, [data], 256, "open-unlearning-tofu")
    prompt = list(tok(OU_PROMPT_TEXT, add_special_tokens=False)["input_ids"])
    answer = list(tok(A, add_special_tokens=False)["input_ids"]) + [tok.convert_tokens_to_ids("<|eot_id|>")]
    assert ou.input_ids == prompt + answer
    assert ou.labels == [IGNORE_INDEX] * len(prompt) + answer
    (auto,) = build_examples(tok, [data], 256)  # default "auto": the chat template without a system prompt
    assert "You are a helpful assistant." not in tok.decode(auto.input_ids) and auto.input_ids != ou.input_ids
