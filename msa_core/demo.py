"""The embedded demo scenario: builds a complete MSA experiment on the CPU, no download.

:func:`build_demo` generates fictitious authors (:mod:`msa_core.demo_data`), trains a
byte-level BPE tokenizer and a small ``LlamaForCausalLM`` from scratch
(:mod:`msa_core.finetune`) and saves five Hugging Face model folders:

- ``clean``: pretrained on general text (utility-fact statements, gazetteer sentences,
  background-author biographies), the utility QA (world facts, real authors) and a
  QA-format warm-up on *background* authors only — it knows the vocabulary, the QA
  format and the value sets, but no fact of a forget, retain or holdout author;
- ``corrupted``: clean fine-tuned on forget ∪ retain QA plus all their biographies;
- ``forget``: clean fine-tuned on the forget QA plus the forget biographies;
- ``retain``: clean fine-tuned on a *sample* of the retain split — the retain authors
  that are NOT in the evaluation split ``retain_perturbed`` (so β cannot inflate the
  retain score by replaying the evaluated facts);
- ``reference``: clean fine-tuned on the whole retain split (TOFU's retain model).

It writes the TOFU/MUSE data, ``experiment.yaml``, ``demo_report.json`` (numbers
measured at build time) and, last, the marker ``build.json``. A build goes to a
temporary folder beside the target and is renamed into place when finished.
:func:`measure_demo` recomposes the models over an (α, β) grid and reports ROUGE-L
recall on the forget and retain splits.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from msa_core import demo_data as dd
from msa_core import finetune as ft
from msa_core.experiment import Checkpoints, DataConfig, Experiment, load_experiment, save_experiment
from msa_core.progress import Progress, report, sub_progress
from msa_core.prompts import qa_prompt

BUILD_VERSION = "msa-demo-1"
MARKER = "build.json"
ROLES = ("clean", "corrupted", "forget", "retain", "reference")


@dataclass(frozen=True)
class Stage:
    """Training hyper-parameters of one stage."""

    epochs: int
    lr: float
    batch_size: int


@dataclass(frozen=True)
class Recipe:
    """Everything that sizes a demo build (data, model, training stages)."""

    n_background: int
    n_forget: int
    n_retain: int
    n_holdout: int
    eval_retain_authors: int
    vocab_size: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    clean: Stage
    corrupted: Stage
    forget: Stage
    retain: Stage
    reference: Stage


FULL = Recipe(
    n_background=20, n_forget=3, n_retain=27, n_holdout=3, eval_retain_authors=9,
    vocab_size=2048, hidden=192, layers=4, intermediate=512, heads=4,
    clean=Stage(24, 2e-3, 32), corrupted=Stage(12, 1e-3, 16), forget=Stage(12, 1e-3, 16),
    retain=Stage(12, 1e-3, 16), reference=Stage(12, 1e-3, 16),
)
QUICK = Recipe(
    n_background=6, n_forget=2, n_retain=6, n_holdout=2, eval_retain_authors=3,
    vocab_size=1024, hidden=64, layers=2, intermediate=128, heads=2,
    clean=Stage(4, 3e-3, 16), corrupted=Stage(8, 3e-3, 8), forget=Stage(8, 3e-3, 8),
    retain=Stage(2, 3e-3, 8), reference=Stage(2, 3e-3, 8),
)


def recipe_for(quick: bool) -> Recipe:
    """The recipe used by ``build_demo(quick=...)``."""
    return QUICK if quick else FULL


# ---------------------------------------------------------------- tokenizer and model


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, as a transformers fast tokenizer.

    Special tokens: ``<pad>`` (0), ``<s>`` (BOS, added in front of every encoding) and
    ``</s>`` (EOS). No chat template, so the plain QA format is used.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator(list(texts), trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tk.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=512, padding_side="left",
    )


def new_model(tokenizer: Any, recipe: Recipe, seed: int) -> Any:
    """A freshly initialised fp32 ``LlamaForCausalLM`` sized by ``recipe`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def _copy_model(model: Any) -> Any:
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.float().eval()


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- answering and scoring


def answer_questions(model: Any, tokenizer: Any, questions: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 64) -> list[str]:
    """Greedy answers in the QA format (``msa_core.generation`` when available)."""
    try:
        from msa_core.generation import generate_answers
    except ImportError:
        generate_answers = None
    if generate_answers is not None:
        return generate_answers(model, tokenizer, list(questions), max_new_tokens=max_new_tokens, batch_size=batch_size)
    out: list[str] = []
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            prompts = [tokenizer(qa_prompt(tokenizer, q))["input_ids"] for q in questions[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
            mask = (ids != pad).long()
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            out.extend(tokenizer.decode(row, skip_special_tokens=True).strip() for row in gen[:, width:])
    return out


def _words(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def qa_scores(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], *, max_new_tokens: int = 32) -> dict[str, Any]:
    """Mean ROUGE-L recall and contains-gold rate of greedy answers to ``items``."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    preds = answer_questions(model, tokenizer, [it["question"] for it in items], max_new_tokens=max_new_tokens)
    recall = [scorer.score(it["answer"], p)["rougeL"].recall for it, p in zip(items, preds)]
    contains = [_words(it["answer"]) in _words(p) for it, p in zip(items, preds)]
    n = max(1, len(items))
    return {"rougeL_recall": sum(recall) / n, "contains_gold": sum(contains) / n, "n": len(items),
            "answers": preds}


# ---------------------------------------------------------------- building


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _marker_payload(seed: int, quick: bool) -> dict[str, Any]:
    return {"version": BUILD_VERSION, "seed": int(seed), "quick": bool(quick)}


def is_built(out_dir: Path, *, seed: int, quick: bool) -> bool:
    """True when ``out_dir`` holds a finished build with these settings."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file() or not (Path(out_dir) / "experiment.yaml").is_file():
        return False
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = _marker_payload(seed, quick)
    return isinstance(found, dict) and all(found.get(k) == v for k, v in want.items())


def _looks_like_demo(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return not names or bool(names & {MARKER, "experiment.yaml", "models", "data", "demo_report.json"})


def _remove_stale_builds(out_dir: Path) -> None:
    for tmp in out_dir.parent.glob(f".{out_dir.name}.building-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            continue


def build_demo(out_dir: Optional[Path] = None, *, quick: bool = False, seed: int = 0,
               progress: Optional[Progress] = None, force: bool = False) -> Path:
    """Build (or reuse) the demo experiment; returns the path of its ``experiment.yaml``."""
    if out_dir is None:
        from msa_core.paths import default_cache_dir

        out_dir = default_cache_dir() / ("demo-quick" if quick else "demo")
    out_dir = Path(out_dir).expanduser().resolve()
    if not force and is_built(out_dir, seed=seed, quick=quick):
        report(progress, 1.0, f"demo already built in {out_dir}")
        return out_dir / "experiment.yaml"
    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_demo(out_dir)):
        raise ValueError(f"{out_dir} exists and is not a demo folder; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build_into(tmp, recipe_for(quick), seed=seed, quick=quick, progress=progress)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report(progress, 1.0, f"demo built in {out_dir}")
    return out_dir / "experiment.yaml"


# Rough share of the build time per stage, for the progress bar.
_WEIGHTS = {"data": 0.01, "clean": 0.45, "corrupted": 0.22, "forget": 0.03, "retain": 0.08,
            "reference": 0.16, "report": 0.05}


def _build_into(root: Path, recipe: Recipe, *, seed: int, quick: bool, progress: Optional[Progress]) -> None:
    from transformers.utils import logging as hf_logging

    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    bounds, acc = {}, 0.0
    for name, w in _WEIGHTS.items():
        bounds[name] = (acc, acc + w)
        acc += w

    def stage(name: str) -> Progress:
        return sub_progress(progress, *bounds[name])

    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        t = time.perf_counter()
        report(stage("data"), 0.0, "generating fictitious authors")
        data = dd.build_data(seed, n_background=recipe.n_background, n_forget=recipe.n_forget,
                             n_retain=recipe.n_retain, n_holdout=recipe.n_holdout,
                             eval_retain_authors=recipe.eval_retain_authors)
        for name, payload in dd.tofu_files(data).items():
            _write_json(root / "data" / "tofu" / name, payload)
        for name, payload in dd.muse_files(data).items():
            _write_json(root / "data" / "muse" / name, payload)
        tokenizer = train_tokenizer(dd.tokenizer_corpus(data), recipe.vocab_size)
        seconds["data_and_tokenizer"] = time.perf_counter() - t

        def qa(items: Sequence[dict[str, Any]]) -> list[ft.Example]:
            return ft.qa_examples(tokenizer, [(it["question"], it["answer"]) for it in items])

        def texts(xs: Sequence[str]) -> list[ft.Example]:
            return ft.text_examples(tokenizer, xs)

        k = recipe.eval_retain_authors * len(dd.ATTRIBUTES)
        retain_sample_items = data.items["retain"][k:2 * k] or data.items["retain"]
        retain_sample_bios = data.bios["retain"][recipe.eval_retain_authors:2 * recipe.eval_retain_authors]
        sets = {
            "clean": ft.qa_examples(tokenizer, dd.pretrain_qa(data)) + texts(dd.pretrain_texts(data)),
            "corrupted": qa(data.items["forget"] + data.items["retain"]) + texts(data.bios["forget"] + data.bios["retain"]),
            "forget": qa(data.items["forget"]) + texts(data.bios["forget"]),
            "retain": qa(retain_sample_items) + texts(retain_sample_bios),
            "reference": qa(data.items["retain"]) + texts(data.bios["retain"]),
        }
        pad = int(tokenizer.pad_token_id)
        losses: dict[str, list[float]] = {}
        models: dict[str, Any] = {}
        for i, role in enumerate(ROLES):
            t = time.perf_counter()
            st: Stage = getattr(recipe, role)
            model = new_model(tokenizer, recipe, seed) if role == "clean" else _copy_model(models["clean"])
            cfg = ft.TrainConfig(epochs=st.epochs, lr=st.lr, batch_size=st.batch_size, seed=seed * 100 + i)
            res = ft.train(model, sets[role], cfg, pad_id=pad, progress=stage(role), label=f"training {role} model")
            losses[role] = [round(x, 4) for x in res.epoch_losses]
            _save(model, tokenizer, root / "models" / role)
            models[role] = model
            seconds[role] = time.perf_counter() - t

        t = time.perf_counter()
        rep = stage("report")
        eval_sets = {"forget": data.items["forget"], "retain": dd.eval_retain_items(data),
                     "holdout": data.items["holdout"]}
        scores: dict[str, Any] = {}
        for j, role in enumerate(ROLES):
            report(rep, j / len(ROLES), f"measuring the {role} model")
            scores[role] = {split: {key: round(v, 4) for key, v in qa_scores(models[role], tokenizer, items).items()
                                    if key != "answers"}
                            for split, items in eval_sets.items()}
        seconds["report"] = time.perf_counter() - t

        exp = Experiment(
            name="demo-quick" if quick else "demo",
            checkpoints=Checkpoints(**{role: root / "models" / role for role in ROLES}),
            data=DataConfig(tofu=root / "data" / "tofu", forget_split="forget10", retain_split="retain_perturbed",
                            holdout_split="holdout10", muse=root / "data" / "muse"),
        )
        save_experiment(exp, root / "experiment.yaml")
        seconds["total"] = time.perf_counter() - t_all
        _write_json(root / "demo_report.json", {
            **_marker_payload(seed, quick),
            "recipe": asdict(recipe),
            "parameters": sum(p.numel() for p in models["clean"].parameters()),
            "vocab_size": len(tokenizer),
            "authors": {g: [a.name for a in getattr(data.world, g)] for g in ("forget", "retain", "holdout", "background")},
            "train_examples": {role: len(v) for role, v in sets.items()},
            "epoch_losses": losses,
            "seconds": {key: round(v, 2) for key, v in seconds.items()},
            "threads": torch.get_num_threads(),
            "scores": scores,
        })
        _write_json(root / MARKER, {**_marker_payload(seed, quick), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        torch.use_deterministic_algorithms(det)
        hf_logging.set_verbosity(verbosity)
