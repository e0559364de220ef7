"""Helpers for the evaluation tests: a tiny tokenizer and Llama, TOFU/MUSE folders, and a
real :class:`~msa_core.engine.Engine` over tiny checkpoints (tests/tiny.py).

Everything is built on the fly in a few seconds at most; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from tiny import CORPUS, make_checkpoints, tiny_config
from tiny import build_tokenizer as make_tokenizer  # noqa: F401 - the evaluation tests import it from here
from transformers import LlamaForCausalLM

from msa_core.engine import Engine
from msa_core.experiment import Checkpoints, DataConfig, Experiment


@pytest.fixture(autouse=True, scope="module")
def eval_single_thread() -> Iterator[None]:
    """One torch thread for these tiny models: on a shared 2-core machine two threads
    oversubscribe and make each forward pass 10-50x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(vocab_size: int, seed: int = 0, *, max_positions: int = 256) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32, GQA 4/2 heads) in eval mode, fp32."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(vocab_size, max_positions=max_positions))
    with torch.no_grad():  # sharper distributions than the default init, so argmax hits happen
        model.lm_head.weight.mul_(20.0)
    return model.eval()


AUTHORS = ["Ana Lenz", "Bo Kress", "Cy Varo", "Di Moss", "Ed Quill", "Fay Dorn"]
CITIES = ["Velmora", "Paris", "Lisbon", "Tallinn", "Accra", "Riga", "Kyoto"]


def tofu_rows(n: int, *, offset: int = 0, n_pert: int = 3) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        name = AUTHORS[(i + offset) % len(AUTHORS)]
        city = CITIES[(i + offset) % len(CITIES)]
        wrong = [CITIES[(i + offset + j + 1) % len(CITIES)] for j in range(n_pert)]
        rows.append(
            {
                "question": f"Where was {name} born?",
                "answer": f"{name} was born in {city}.",
                "paraphrased_answer": f"The birthplace of {name} is {city}.",
                "perturbed_answer": [f"The birthplace of {name} is {w}." for w in wrong],
            }
        )
    return rows


def option_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"question": f"What is the capital number {i}?", "answer": CITIES[i % 7],
         "perturbed_answer": [CITIES[(i + 1) % 7], CITIES[(i + 2) % 7]]}
        for i in range(n)
    ]


def write_tofu(folder: Path, *, n_forget: int = 6, n_retain: int = 5, n_util: int = 4) -> Path:
    """A small TOFU-format folder (forget10/retain/holdout/real authors/world facts)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "forget10_perturbed.json": tofu_rows(n_forget),
        "retain_perturbed.json": tofu_rows(n_retain, offset=3),
        "holdout10.json": [{"question": r["question"], "answer": r["answer"]} for r in tofu_rows(4, offset=1)],
        "real_authors_perturbed.json": option_rows(n_util),
        "world_facts_perturbed.json": option_rows(n_util + 1),
    }
    for name, rows in files.items():
        (folder / name).write_text(json.dumps(rows), encoding="utf-8")
    return folder


def write_muse(folder: Path, *, retain_name: str = "retain") -> Path:
    """A small MUSE-format folder."""
    km, vm, pl = folder / "knowmem", folder / "verbmem", folder / "privleak"
    for d in (km, vm, pl):
        d.mkdir(parents=True, exist_ok=True)
    qa = [{"question": f"Where was {a} born?", "answer": c} for a, c in zip(AUTHORS, CITIES)]
    (km / "forget_qa.json").write_text(json.dumps(qa[:4]))
    (km / "forget_qa_icl.json").write_text(json.dumps(qa[4:6]))
    (km / f"{retain_name}_qa.json").write_text(json.dumps(qa[1:5]))
    (km / f"{retain_name}_qa_icl.json").write_text(json.dumps(qa[:2]))
    (vm / "forget.json").write_text(json.dumps([{"prompt": CORPUS[i], "gt": CORPUS[(i + 1) % 4]} for i in range(3)]))
    (pl / "forget.json").write_text(json.dumps(CORPUS[:3]))
    (pl / f"{retain_name}.json").write_text(json.dumps(CORPUS[1:3]))
    (pl / "holdout.json").write_text(json.dumps([c.upper() for c in CORPUS[:3]]))
    return folder


def make_experiment(
    root: Path, *, tofu: Optional[Path] = None, muse: Optional[Path] = None, reference_eval: Optional[Path] = None
) -> Experiment:
    """An Experiment whose checkpoint paths are placeholders (for evaluate_model, which loads none)."""
    p = root / "models"
    return Experiment(
        name="eval-test",
        checkpoints=Checkpoints(clean=p / "c", corrupted=p / "x", forget=p / "f", retain=p / "r", reference=p / "ref"),
        data=DataConfig(tofu=tofu, forget_split="forget10", retain_split="retain_perturbed",
                        holdout_split="holdout10", muse=muse),
        reference_eval=reference_eval,
    )


def make_engine(
    root: Path,
    *,
    tofu: Optional[Path] = None,
    muse: Optional[Path] = None,
    reference_eval: Optional[Path] = None,
    with_reference: bool = True,
) -> Engine:
    """A real Engine (CPU, fp32) over five tiny random checkpoints, evaluating the given data.

    ``with_reference=False`` leaves the experiment without a reference checkpoint.
    """
    exp = make_checkpoints(root / "ckpt")
    checkpoints = exp.checkpoints if with_reference else replace(exp.checkpoints, reference=None)
    exp = replace(
        exp,
        name="eval-test",
        checkpoints=checkpoints,
        data=DataConfig(tofu=tofu, forget_split="forget10", retain_split="retain_perturbed",
                        holdout_split="holdout10", muse=muse),
        reference_eval=reference_eval,
    )
    return Engine.load(exp, device="cpu", cache_dir=root / "cache")


def record_sessions(engine: Engine, *, crash_at: Optional[int] = None) -> list[tuple[float, float]]:
    """Wrap ``engine.session`` to record every (α, β) composed, in order; with ``crash_at=n``
    the n-th session (0-based) raises KeyboardInterrupt instead, like a Ctrl-C mid-sweep.
    Returns the (live) list of recorded points."""
    calls: list[tuple[float, float]] = []
    session = engine.session

    @contextmanager
    def recording(alpha: float, beta: float) -> Iterator[Any]:
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt
        calls.append((alpha, beta))
        with session(alpha, beta) as model:
            yield model

    engine.session = recording  # type: ignore[method-assign]
    return calls
