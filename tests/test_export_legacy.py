"""An export loads under transformers 4.45.1 (open-unlearning's pin) as the same model as under
the installed transformers 5: same logits, token ids, chat template and greedy generation, for
a corrupted checkpoint written by transformers 4 (a hub checkpoint) or 5 (one built here).

Slow: it runs a second Python in a venv that sees this machine's torch but has its own
transformers 4.45.1 / tokenizers < 0.21 (``python3 -m venv --system-site-packages`` + pip). The
venv is built once and kept at ``$MSA_TF445_VENV`` (default ``~/.cache/msa-studio-tests/venv-tf445``);
the test is skipped, with the reason, when it cannot be built (no network, no pip).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from legacy_checkpoints import MESSAGES, ROPE_THETA, make_legacy_checkpoints, make_v5_checkpoints

from msa_core.engine import Engine
from msa_core.export import export_model

pytestmark = pytest.mark.slow

LEGACY_TRANSFORMERS = "4.45.1"
VENV = Path(os.environ.get("MSA_TF445_VENV", Path.home() / ".cache" / "msa-studio-tests" / "venv-tf445"))
# Marks a venv whose install finished (a killed build leaves none and is rebuilt).
_DONE = ".msa-complete"
# Bounds on building the venv, so that a full suite without network skips in about a minute:
# pip gives up on an unreachable index after one retry of _PIP_NET_TIMEOUT_S.
_PIP_NET_TIMEOUT_S = 20
_BUILD_TIMEOUT_S = 600
# fp32 logits of the same weights under two transformers versions (both SDPA attention):
# only summation-order differences, far below any modelling difference (rope_theta 10000 vs
# 500000 changes them by O(1e-2) on this model).
LOGITS_ATOL = 1e-5
TEXTS = ["Where was Ana Lenz born?", "Bo Kress writes mystery novels.", "Ünïcode and  spaces\tand tabs"]

LEGACY_SCRIPT = r"""
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, AutoConfig, pipeline
export, resaved, outfile = sys.argv[1:4]
messages = json.loads(sys.argv[4]); texts = json.loads(sys.argv[5])
tok = AutoTokenizer.from_pretrained(export)
model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
chat = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
with torch.no_grad():
    logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=6, do_sample=False)
pipe = pipeline("text-generation", model=export, torch_dtype=torch.float32)
text = pipe(texts[0], max_new_tokens=4, do_sample=False)[0]["generated_text"]
torch.save({"logits": logits, "ids": ids, "generated": gen}, outfile)
print(json.dumps({
    "version": transformers.__version__,
    "tokenizer_class": type(tok).__name__,
    "chat": chat,
    "text_ids": [tok(t).input_ids for t in texts],
    "rope_theta": model.config.rope_theta,
    "rope_scaling": model.config.rope_scaling,
    "pipeline_text": text,
    "resaved_rope_theta": AutoConfig.from_pretrained(resaved).rope_theta,
}))
"""


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _venv_ok() -> bool:
    if not (VENV / _DONE).is_file():
        return False
    probe = [str(_venv_python()), "-c", "import transformers, torch; print(transformers.__version__)"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and done.stdout.strip() == LEGACY_TRANSFORMERS


def _build_venv() -> str:
    """Build the venv; returns '' on success, else why it could not be built."""
    shutil.rmtree(VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", "--system-site-packages", str(VENV)],
        [str(_venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--retries", "1",
         "--timeout", str(_PIP_NET_TIMEOUT_S), f"transformers=={LEGACY_TRANSFORMERS}", "tokenizers<0.21"],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd[:4])} … took over {_BUILD_TIMEOUT_S} s"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return f"{' '.join(cmd[:4])} … failed: {tail[0]}"
    (VENV / _DONE).write_text(LEGACY_TRANSFORMERS + "\n")
    return ""


@pytest.fixture(scope="module")
def legacy_python() -> Path:
    """The venv's python with transformers 4.45.1 (built once, under a lock shared by processes)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{VENV.name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not _venv_ok():
            why = _build_venv()
            if why or not _venv_ok():
                shutil.rmtree(VENV, ignore_errors=True)
                pytest.skip(f"cannot build a transformers {LEGACY_TRANSFORMERS} venv at {VENV}: "
                            f"{why or 'it does not import'}")
    return _venv_python()


@pytest.mark.parametrize("written_by", ["transformers 4", "transformers 5"])
def test_an_export_loads_under_transformers_4_45_as_the_same_model(legacy_python, tmp_path, written_by):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    # the corrupted checkpoint as on the hub (4.x files: copied as they are) or as built here (5.x
    # files: the legacy keys are added)
    make = make_legacy_checkpoints if written_by == "transformers 4" else make_v5_checkpoints
    engine = Engine.load(make(tmp_path / "ckpt"), cache_dir=tmp_path / "cache")
    out = export_model(engine, 1.5, 0.5, tmp_path / "unlearned")
    resaved = tmp_path / "resaved"  # what transformers 5's save_pretrained alone would write
    engine.model.save_pretrained(resaved)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [str(legacy_python), "-c", LEGACY_SCRIPT, str(out), str(resaved), str(tmp_path / "legacy.pt"),
         json.dumps(MESSAGES), json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    legacy = json.loads(done.stdout.strip().splitlines()[-1])
    tensors = torch.load(tmp_path / "legacy.pt")
    assert legacy["version"] == "4.45.1"

    # transformers 5, the same folder
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    chat = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True,
                                  return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=6, do_sample=False)
    text = pipeline("text-generation", model=str(out), dtype=torch.float32)(TEXTS[0], max_new_tokens=4,
                                                                             do_sample=False)[0]["generated_text"]

    assert legacy["rope_theta"] == ROPE_THETA and legacy["rope_scaling"]["rope_type"] == "llama3"
    assert legacy["chat"] == chat and "You are a helpful assistant." in chat
    assert torch.equal(tensors["ids"], ids)
    assert legacy["text_ids"] == [tok(t).input_ids for t in TEXTS]
    torch.testing.assert_close(tensors["logits"], logits, atol=LOGITS_ATOL, rtol=0)
    assert torch.equal(tensors["generated"], generated) and legacy["pipeline_text"] == text
    # The case the copied files guard against: a transformers 5 config read by 4.45 silently
    # falls back to the default rope_theta.
    assert legacy["resaved_rope_theta"] != ROPE_THETA
