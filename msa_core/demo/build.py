"""The embedded demo's build: recipes, tokenizer and model training, the experiment folder.

:func:`build_demo` generates fictitious authors (:mod:`msa_core.demo.data`), trains a
byte-level BPE tokenizer and a small ``LlamaForCausalLM`` from scratch and saves five
Hugging Face model folders. Every model is trained by :func:`msa_core.finetune.finetune`,
the one training path of the project (``msa finetune``), and the four fine-tunes of
θ_clean are run exactly as ``msa init`` runs them (:func:`msa_core.recipe.train_checkpoints`
on the demo's own TOFU and MUSE files), so ``msa init models/clean --data-dir data/tofu
--reference`` with :func:`init_args` rebuilds them:

- ``clean``: a seeded random model (saved to a folder first) trained on general text
  (utility-fact statements, a lexicon of every value set, background-author biographies),
  the utility QA (world facts, real authors) and a QA-format warm-up on *background*
  authors only — it knows the vocabulary, the QA format and the value sets, but no fact
  of a forget, retain or holdout author;
- ``forget``: clean fine-tuned on ``tofu:forget10`` (the forget authors' QA), the same facts
  in other phrasings (``tofu:forget10_phrasings``) and ``muse:raw/forget`` (their biographies);
- ``retain``: clean fine-tuned on ``tofu:retain90_ft`` (the reference recipe's seeded
  forget-sized sample of the retain split) and those facts' phrasings only: no MUSE file
  holds just the sampled authors' biographies, and all 27 made this run 6x slower (18.2 s vs
  3.2 s, full demo) for a retain vector that then also protects the biography skill the
  forget vector removes;
- ``corrupted``: clean fine-tuned on ``tofu:full`` (forget ∪ retain QA), its phrasings and
  the forget and retain biographies;
- ``reference``: clean fine-tuned on ``tofu:retain90`` (TOFU's retain model), its phrasings
  and the retain biographies.

The phrasings (:data:`msa_core.demo.data.PHRASINGS`) never include the evaluation's
paraphrased question or answer: the truth ratio then measures whether a model knows a fact
beyond the phrasings it was trained on (trained on the short answers alone, the corrupted
model could not tell the paraphrase from its perturbed versions: forget TR 0.82 vs the
reference's 1.62, measured on msa-demo-4).

The biographies (:data:`STAGES`' extra data, ``msa init --muse-dir … --add …``) are what the
MUSE metrics measure: without them θ_corrupted never saw the forget biographies, and verbmem
/ PrivLeak had nothing to detect (verbmem 0.06 at α = β = 0, measured).

The forget and retain models use a lower learning rate than the corrupted model (see
:data:`FULL`): fine-tuning a small model hard on a few authors moves every weight, and
subtracting that vector then erases retained facts too (measured while sizing the demo).
What the built demo measures is in README.md ("The embedded demo and what it shows");
each build writes its own numbers into ``demo_report.json``
(:func:`msa_core.demo.report.score_targets` through the engine).

The paper's comparisons (since msa-demo-6): θ_clean keeps an earlier pretraining epoch
(:attr:`Recipe.history_epoch`, ``models/history/pretrain-eK/clean``, which like the final
θ_clean precedes the forget authors: they enter training only in the fine-tunes), and that
checkpoint and θ_corrupted (the task vector) get their own forget and retain fine-tunes
(:func:`msa_core.recipe.train_candidate`), listed in ``experiment.yaml``'s ``clean_history``;
the default forget and retain fine-tunes keep their epoch folders (e_f, e_r). Once the folder
is in place (the stored results key the data folders' paths),
:func:`msa_core.demo.report.measure_comparison` stores a fast-tier grid per θ_clean choice and a
gradient baseline's epochs (:attr:`Recipe.baseline`, trained into ``models/baselines/<method>``)
in the results store, and its table goes into ``demo_report.json`` (``comparison``).

It writes the TOFU/MUSE data, ``experiment.yaml``, ``demo_report.json`` and, last, the
marker ``build.json``. A build goes to a temporary folder beside the target
(:func:`msa_core.atomic.temp_dir_beside`, whose owner file lets a later build remove the
folders of dead builds, :func:`msa_core.atomic.clean_stale_temp`) and is put in place by
:func:`msa_core.atomic.replace_dir`. An existing folder is replaced only when it holds the
marker of a finished build (or is empty): ``--out`` pointing at any other folder is refused,
``--force`` included, so the build never deletes what it did not make.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from msa_core.atomic import clean_stale_temp, recover_replacement, replace_dir, temp_dir_beside, write_text
from msa_core.demo import data as dd
from msa_core.demo.report import COMPARE_ALPHAS, COMPARE_BETAS, BaselineSpec, measure_comparison, score_targets
from msa_core.engine import Engine
from msa_core.experiment import Checkpoints, DataConfig, Experiment, save_experiment
from msa_core.finetune import CARD, FinetuneResult, TrainConfig, TrainingData, finetune, qa_data, text_data
from msa_core.progress import Progress, report, sub_progress
from msa_core.recipe import TASK_VECTOR, Stages, load_stage_data, train_candidate, train_checkpoints
from msa_core.targets import Point, Side, Target

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from msa_core.eval.store import ResultStore

log = logging.getLogger(__name__)

BUILD_VERSION = "msa-demo-6"
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
    """Everything that sizes a demo build (data, model, training stages).

    ``clean`` trains θ_clean from random weights; ``finetune`` trains the corrupted and the
    reference models from it, ``vectors`` the forget and retain models (see :data:`FULL` for
    why gentler). :func:`init_args` turns the two into ``msa init`` options that rebuild them.
    ``history_epoch``: the θ_clean epoch kept as the earlier candidate; ``baseline``: the
    :data:`BASELINE_METHOD` run; ``compare_*``: the (α, β) grid measured per θ_clean choice;
    ``history_vectors``: the history candidates' forget/retain stage when not ``vectors`` (the
    quick demo's shorter one keeps its build short; its comparison is then not like for like).
    """

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
    finetune: Stage
    vectors: Stage
    history_epoch: int
    baseline: Stage
    compare_alphas: tuple[float, ...] = COMPARE_ALPHAS
    compare_betas: tuple[float, ...] = COMPARE_BETAS
    history_vectors: Optional[Stage] = None


# Sizing (measured on a shared 2-core CPU, one torch thread): a 1.9M-parameter Llama
# (hidden 160, 4 layers) learns 30 authors x 10 facts in 12 epochs only when θ_clean has
# already memorised other authors in the same format (20 background authors, 20 epochs:
# it then has the name→value "binding" skill and fine-tuning only adds new bindings).
# Batch 8 costs about the same per epoch as 16 or 32 on this CPU and gives more updates;
# lr 2e-3 or more stalled. The forget and retain models use a lower learning rate than the
# corrupted one: fine-tuning a small model hard on a few authors moves every weight, and
# subtracting that vector then erases retained facts too (quick demo, measured: the forget
# model at the corrupted model's lr 2e-3 left 0.35 retain recall at α=1, β=0.5; at 7e-4, 0.85).
# Epochs since msa-demo-5, where every trained fact comes in three phrasings (see data.PHRASINGS):
# with θ_clean's 20 epochs, 8 fine-tune / 12 vector epochs gave about the point (α=1, β=0.5:
# forget recall 0.17, retain 0.89) that 12 / 24 gave (0.14, 0.94) with 0.64x the examples seen,
# and 6 / 8 lost more retain recall (0.82). θ_clean at 15 epochs instead of 20 (its data grew
# by a third with the background phrasings) still gave a corrupted model with every answer
# right (all measured).
FULL = Recipe(
    n_background=20, n_forget=3, n_retain=27, n_holdout=3, eval_retain_authors=9,
    vocab_size=2048, hidden=160, layers=4, intermediate=448, heads=4,
    clean=Stage(15, 1e-3, 8), finetune=Stage(8, 1e-3, 8), vectors=Stage(12, 4.5e-4, 8),
    history_epoch=5, baseline=Stage(5, 1e-3, 8),
)
QUICK = Recipe(
    n_background=6, n_forget=2, n_retain=6, n_holdout=2, eval_retain_authors=3,
    vocab_size=1024, hidden=96, layers=2, intermediate=256, heads=2,
    clean=Stage(8, 2e-3, 8), finetune=Stage(12, 2e-3, 8), vectors=Stage(12, 7e-4, 8),
    history_epoch=3, baseline=Stage(2, 2e-3, 8), compare_alphas=(1.0, 2.0), compare_betas=(0.0, 0.5),
    history_vectors=Stage(4, 7e-4, 8),
)
# The gradient baseline of the comparison (msa_core.baselines): NPO only needs the forget set
# and θ_corrupted as its reference, so it is the cheapest of the three per epoch.
BASELINE_METHOD = "NPO"
# The four fine-tunes: the demo's TOFU splits, then the same facts in other phrasings (the
# *_phrasings files, see the module docstring), and the biographies of the authors a role
# learns (MUSE raw texts, read from data/muse); the retain role has no biographies.
STAGES = Stages(forget="forget10", retain="retain90", full="full", reference=True, extra={
    "forget": ("tofu:forget10_phrasings", "muse:raw/forget"),
    "retain": ("tofu:retain90_ft_phrasings",),
    "corrupted": ("tofu:full_phrasings", "muse:raw/forget", "muse:raw/retain"),
    "reference": ("tofu:retain90_phrasings", "muse:raw/retain"),
})
# The (α, β) point the build report measures (and the app may start from).
SUGGESTED = (1.0, 0.5)


def recipe_for(quick: bool) -> Recipe:
    """The recipe used by ``build_demo(quick=...)``."""
    return QUICK if quick else FULL


# ---------------------------------------------------------------- tokenizer and model


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
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


def new_model(tokenizer: PreTrainedTokenizerFast, recipe: Recipe, seed: int) -> LlamaForCausalLM:
    """A freshly initialised fp32 ``LlamaForCausalLM`` sized by ``recipe`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def save_initial_model(tokenizer: PreTrainedTokenizerFast, recipe: Recipe, seed: int, folder: Path) -> Path:
    """Save the seeded random :func:`new_model` with ``tokenizer`` as an HF folder (θ_clean's base)."""
    model = new_model(tokenizer, recipe, seed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def clean_training_data(data: dd.DemoData) -> list[TrainingData]:
    """θ_clean's training data: the QA warm-up and the raw-text corpus (never a forget,
    retain or holdout author's fact; :func:`msa_core.demo.data.pretrain_qa` / ``pretrain_texts``)."""
    return [qa_data("demo:pretrain_qa", dd.pretrain_qa(data)),
            text_data("demo:pretrain_texts", dd.pretrain_texts(data))]


def init_args(recipe: Recipe, seed: int = 0, *, muse_dir: os.PathLike[str] | str) -> list[str]:
    """The ``msa init`` options that rebuild the demo's four fine-tunes from its θ_clean:
    the training settings, and the biographies (:data:`STAGES`' extra data) read from
    ``muse_dir`` (the demo's ``data/muse`` folder)."""
    ft, vec = recipe.finetune, recipe.vectors
    args = ["--epochs", str(ft.epochs), "--lr", repr(ft.lr), "--batch-size", str(ft.batch_size), "--seed", str(seed),
            "--group-by-length", "--save-every-epoch"]
    for role in ("forget", "retain"):
        args += ["--set", f"{role}.epochs={vec.epochs}", "--set", f"{role}.lr={vec.lr!r}",
                 "--set", f"{role}.batch_size={vec.batch_size}"]
    args += ["--muse-dir", os.fspath(muse_dir)]
    for role, specs in STAGES.extra.items():
        args += [x for spec in specs for x in ("--add", f"{role}={spec}")]
    return args


def train_config(stage: Stage, seed: int) -> TrainConfig:
    """The :class:`~msa_core.finetune.TrainConfig` of a demo stage (reference-recipe defaults otherwise;
    the torch thread count is set once by :func:`build_demo`).

    Not resumable: a killed demo build restarts from nothing anyway (its temp folder is
    discarded), so the per-epoch Trainer checkpoints would only cost time.
    """
    return TrainConfig(epochs=stage.epochs, lr=stage.lr, batch_size=stage.batch_size, seed=seed, resumable=False)


def finetune_config(stage: Stage, seed: int) -> TrainConfig:
    """A fine-tune's :func:`train_config`, batched by length: a batch mixing 20-token QA
    with one 85-token biography pads every row to 85, and half the corrupted model's
    batches held one (measured: the four fine-tunes took 98 s mixed, 70 s grouped).
    θ_clean is not grouped (see the NOTE in :func:`_build_into`)."""
    return dataclasses.replace(train_config(stage, seed), group_by_length=True)


# ---------------------------------------------------------------- building


def vector_config(recipe: Recipe, seed: int) -> TrainConfig:
    """The forget and retain fine-tunes' config (the gentler :attr:`Recipe.vectors` stage, by length)."""
    return finetune_config(recipe.vectors, seed)


def kept_epochs(recipe: Recipe) -> list[int]:
    """The epoch folders (e_f, e_r) the default forget and retain fine-tunes keep: about three,
    evenly spaced, the last epoch left out (it is the fine-tune folder itself)."""
    n = recipe.vectors.epochs
    stride = max(1, n // 4)
    return [k for k in range(stride, n, stride)][:3]


def _prune_epochs(folder: Path, keep: Sequence[int]) -> list[str]:
    """Remove ``folder``'s epoch folders not in ``keep`` (all made by this build) and record the
    rest in its card's ``epoch_dirs``; returns the kept names."""
    kept = []
    for d in sorted(folder.glob("epoch-*")):
        if d.is_dir() and d.name.split("-", 1)[1].isdigit() and int(d.name.split("-", 1)[1]) in keep:
            kept.append(d.name)
        elif d.is_dir():
            shutil.rmtree(d)
    kept.sort(key=lambda name: int(name.split("-", 1)[1]))
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    card["epoch_dirs"] = kept
    _write_json(folder / CARD, card)
    return kept


def _write_json(path: Path, payload: Any) -> None:
    # Not atomic.write_json: the data files keep their UTF-8 text and one-space indent.
    write_text(path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


def _marker_payload(seed: int, quick: bool) -> dict[str, Any]:
    return {"version": BUILD_VERSION, "seed": int(seed), "quick": bool(quick)}


def is_built(out_dir: Path, *, seed: int, quick: bool) -> bool:
    """True when ``out_dir`` holds a finished build with these settings (marker and files present)."""
    root = Path(out_dir)
    marker = root / MARKER
    needed = [root / "experiment.yaml"]
    needed += [root / "models" / r / f for r in ROLES for f in ("config.json", "model.safetensors")]
    if not marker.is_file() or not all(p.is_file() for p in needed):
        return False
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = _marker_payload(seed, quick)
    return isinstance(found, dict) and all(found.get(k) == v for k, v in want.items())


def is_demo_folder(folder: Path) -> bool:
    """True when ``folder`` was made by a finished demo build (any seed or size): it holds
    the :data:`MARKER` written last by the build, naming a demo build version."""
    try:
        found = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and str(found.get("version", "")).startswith("msa-demo")


def _may_replace(folder: Path) -> bool:
    # Only a finished demo build, or an empty folder (nothing to lose), is ever replaced.
    return folder.is_dir() and not folder.is_symlink() and (not any(folder.iterdir()) or is_demo_folder(folder))


def build_demo(out_dir: Optional[str | os.PathLike[str]] = None, *, quick: bool = False, seed: int = 0,
               progress: Optional[Progress] = None, force: bool = False, num_threads: int = 1,
               store: Optional[ResultStore] = None) -> Path:
    """Build (or reuse) the demo experiment; returns the path of its ``experiment.yaml``.

    Training uses ``num_threads`` torch threads (1 by default: the matrices are tiny, and
    on a shared CPU two threads were measured ~10x slower than one). Weights are
    reproducible for a given seed and thread count. The comparison's points (every θ_clean
    choice's grid, the baseline's epochs) go to ``store``; when None, to the default results
    store (the app's) for the default folder, else to ``<out_dir>/results.sqlite`` (the choices'
    vectors likewise to the default cache, else ``<out_dir>/vectors``). A demo already built is
    returned as is.
    """
    own_store = out_dir is not None
    if out_dir is None:
        from msa_core.paths import default_demo_dir

        out_dir = default_demo_dir(quick)
    raw = os.fspath(out_dir)
    if not raw.strip():
        raise ValueError("the demo folder is empty (''); give a folder name, or none for the default")
    out_dir = Path(raw).expanduser().resolve()
    if out_dir.parent.is_dir():
        recover_replacement(out_dir, is_demo_folder)  # a build killed mid-replacement: logged
    if not force and is_built(out_dir, seed=seed, quick=quick):
        report(progress, 1.0, f"demo already built in {out_dir}")
        return out_dir / "experiment.yaml"
    if (out_dir.exists() or out_dir.is_symlink()) and not _may_replace(out_dir):
        raise ValueError(
            f"{out_dir} exists and was not created by `msa demo` (no {MARKER} marker of a finished build); "
            "refusing to replace it, even with --force: choose another --out folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    recipe = recipe_for(quick)
    try:
        with temp_dir_beside(out_dir) as tmp:
            _build_into(tmp, recipe, seed=seed, quick=quick, progress=sub_progress(progress, 0.0, _BUILD_SHARE))
            try:
                replace_dir(tmp, out_dir, may_replace=_may_replace, is_complete=is_demo_folder)
            except FileExistsError:
                raise ValueError(
                    f"{out_dir} appeared during the build and was not created by `msa demo`; "
                    "refusing to replace it (the new build was discarded)"
                ) from None
        _compare_into(out_dir, recipe, seed=seed, store=store, own_store=own_store,
                      progress=sub_progress(progress, _BUILD_SHARE, 1.0))
    finally:
        torch.set_num_threads(threads)
    report(progress, 1.0, f"demo built in {out_dir}")
    return out_dir / "experiment.yaml"


def _compare_into(root: Path, recipe: Recipe, *, seed: int, store: Optional[ResultStore], own_store: bool,
                  progress: Optional[Progress]) -> None:
    """The comparison on the demo in place: stored points, the baseline's folder, and the table in
    ``demo_report.json`` (rewritten with a ``comparison`` entry; the build made that file, and a
    build that wrote none has nothing to compare). ``own_store``: the store (when None) and the
    vectors go inside ``root`` instead of the default cache."""
    from transformers.utils import logging as hf_logging

    from msa_core.eval.store import ResultStore

    path = root / "demo_report.json"
    if not path.is_file():
        log.debug("no %s: the comparison is skipped", path)
        return
    if store is None:
        store = ResultStore(root / "results.sqlite") if own_store else ResultStore()
    cache_dir = root / "vectors" if own_store else None
    t = time.perf_counter()
    baseline = None
    try:
        from msa_core.baselines import BASELINE_CONFIG  # owner: msa_core/baselines.py
    except ModuleNotFoundError:
        log.warning("msa_core.baselines is missing: the demo's comparison has no gradient baseline")
    else:
        # open-unlearning's trainer settings (no warm-up, linear decay), sized for the tiny model:
        # its lr, one optimizer step per batch (the forget set is a few batches).
        st = recipe.baseline
        config = dataclasses.replace(BASELINE_CONFIG, epochs=st.epochs, lr=st.lr, batch_size=st.batch_size,
                                     grad_accum=1, seed=seed, resumable=False)
        baseline = BaselineSpec(BASELINE_METHOD, config, root / "models" / "baselines" / BASELINE_METHOD)
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        result = measure_comparison(root / "experiment.yaml", store, alphas=recipe.compare_alphas,
                                    betas=recipe.compare_betas, baseline=baseline, cache_dir=cache_dir,
                                    num_threads=None, progress=progress)
    finally:
        torch.use_deterministic_algorithms(det)
        hf_logging.set_verbosity(verbosity)
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload["comparison"] = {**result, "store": str(store.path)}
    payload.setdefault("seconds", {})["comparison"] = round(time.perf_counter() - t, 2)
    seconds = payload["seconds"]
    seconds["total_with_comparison"] = round(seconds.get("total", 0.0) + seconds["comparison"], 2)
    _write_json(path, payload)


# Rough share of the build time per stage, for the progress bar (msa-demo-5, measured: θ_clean
# 73 s, the four fine-tunes 93 s, the report 5 s of 171 s; msa-demo-6 adds the history's fine-tunes
# in the build and the comparison after it).
_WEIGHTS = {"data": 0.01, "clean": 0.35, "finetunes": 0.42, "history": 0.19, "report": 0.03}
_BUILD_SHARE = 0.8


def _stage_bounds() -> dict[str, tuple[float, float]]:
    bounds, acc = {}, 0.0
    for name, w in _WEIGHTS.items():
        bounds[name] = (acc, acc + w)
        acc += w
    return bounds


def _build_into(root: Path, recipe: Recipe, *, seed: int, quick: bool, progress: Optional[Progress]) -> None:
    from transformers.utils import logging as hf_logging

    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    bounds = _stage_bounds()

    def stage(name: str) -> Progress:
        return sub_progress(progress, *bounds[name])

    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the caller's progress callback is the one progress display
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
        report(stage("data"), 0.5, "training the tokenizer")
        tokenizer = train_tokenizer(dd.tokenizer_corpus(data), recipe.vocab_size)
        seconds["data_and_tokenizer"] = time.perf_counter() - t

        # θ_clean: random weights saved to a folder, then the one training path (msa finetune).
        t = time.perf_counter()
        models = root / "models"
        runs: dict[str, FinetuneResult] = {}
        with temp_dir_beside(models / "init") as init:
            save_initial_model(tokenizer, recipe, seed, init)
            # NOTE: not group_by_length, although 35% faster here: batches of like-length
            # examples separate texts from QA and θ_clean learnt the format worse (loss 0.72
            # vs 0.45; the corrupted model then knew only 90% of the full set).
            # Every epoch is saved; one (history_epoch) is kept as the earlier θ_clean candidate.
            clean_config = dataclasses.replace(train_config(recipe.clean, seed), save_every_epoch=True)
            runs["clean"] = finetune(init, clean_training_data(data), models / "clean", clean_config,
                                     progress=stage("clean"), reuse=False)
        earlier = f"pretrain-e{recipe.history_epoch}"
        history_dir = models / "history" / earlier
        history_dir.mkdir(parents=True)
        os.replace(models / "clean" / f"epoch-{recipe.history_epoch}", history_dir / "clean")
        _prune_epochs(models / "clean", ())
        seconds["clean"] = time.perf_counter() - t

        # The four fine-tunes exactly as `msa init --save-every-epoch` runs them, on the demo's own
        # TOFU and MUSE files; the forget and retain ones keep a few epoch folders (e_f, e_r).
        gentle = vector_config(recipe, seed)
        epochs = dataclasses.replace(gentle, save_every_epoch=True)
        stage_data = load_stage_data(root / "data" / "tofu", STAGES, root / "data" / "muse")
        tuned = train_checkpoints(models / "clean", stage_data, models,
                                  finetune_config(recipe.finetune, seed), role_configs={"forget": epochs, "retain": epochs},  # noqa: E501
                                  progress=stage("finetunes"), reuse=False)
        runs.update(tuned)
        seconds.update({role: r.seconds for role, r in tuned.items()})
        for role in ("forget", "retain"):
            _prune_epochs(models / role, kept_epochs(recipe))

        # The checkpoint history: the earlier θ_clean and θ_corrupted (the task vector), each with
        # forget and retain fine-tunes of the same data and settings as the default ones.
        t = time.perf_counter()
        history = []
        hist_config = gentle if recipe.history_vectors is None else finetune_config(recipe.history_vectors, seed)
        for i, (label, clean, before, step, out) in enumerate((
                (earlier, history_dir / "clean", True, float(recipe.history_epoch), history_dir),
                (TASK_VECTOR, models / "corrupted", False, float(recipe.clean.epochs + recipe.finetune.epochs),
                 models / "history" / TASK_VECTOR))):
            lo, hi = bounds["history"]
            cand, cand_runs = train_candidate(label, clean, stage_data, out, hist_config, before_forget=before,
                                              step=step,
                                              progress=sub_progress(progress, lo + (hi - lo) * i / 2,
                                                                    lo + (hi - lo) * (i + 1) / 2), reuse=False)
            history.append(cand)
            runs.update({f"{label}/{role}": r for role, r in cand_runs.items()})
        seconds["history"] = time.perf_counter() - t

        exp = Experiment(
            name="demo-quick" if quick else "demo",
            checkpoints=Checkpoints(**{role: models / role for role in ROLES}),
            data=DataConfig(tofu=root / "data" / "tofu", forget_split="forget10", retain_split="retain_perturbed",
                            holdout_split="holdout10", muse=root / "data" / "muse"),
            clean_history=tuple(history),
        )
        save_experiment(exp, root / "experiment.yaml")

        t = time.perf_counter()
        alpha, beta = SUGGESTED
        scores = _measure_build(exp, root, data, stage("report"))
        seconds["report"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t_all
        _write_json(root / "demo_report.json", {
            **_marker_payload(seed, quick),
            "recipe": asdict(recipe),
            "parameters": sum(p.numel() for p in new_model(tokenizer, recipe, seed).parameters()),
            "vocab_size": len(tokenizer),
            "authors": {g: [a.name for a in getattr(data.world, g)]
                        for g in ("forget", "retain", "holdout", "background")},
            "train_data": {role: {"data": _data_names(r.out), "epochs": r.epochs_done,
                                  "final_loss": round(r.final_loss, 4)} for role, r in runs.items()},
            "seconds": {key: round(v, 2) for key, v in seconds.items()},
            "threads": torch.get_num_threads(),
            "suggested": {"alpha": alpha, "beta": beta},
            "scores": scores,
        })
        _write_json(root / MARKER, {**_marker_payload(seed, quick), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        torch.use_deterministic_algorithms(det)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _data_names(folder: Path) -> Any:
    # What a model was trained on, as its msa finetune card says (names and example counts).
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    return card.get("data")


def _measure_build(exp: Experiment, root: Path, data: dd.DemoData, progress: Progress) -> dict[str, Any]:
    """Scores of every model and of the :data:`SUGGESTED` point on the forget, retain and
    holdout QA, measured through the engine from the saved folders (as the app will see them)."""
    splits = {"forget": data.items["forget"], "retain": dd.eval_retain_items(data), "holdout": data.items["holdout"]}
    alpha, beta = SUGGESTED
    targets: list[Target] = [Side(role) for role in ROLES] + [Point(alpha, beta)]
    # The vectors go to a throwaway cache inside the build folder: the build must not write
    # into the user's cache, and a cache entry would name the temp folder as its inputs.
    with temp_dir_beside(root / "vectors") as cache:
        engine = Engine.load(exp, device="cpu", dtype=torch.float32, cache_dir=cache)
        rows = score_targets(engine, targets, splits, progress=progress)
    scores: dict[str, Any] = {}
    for row in rows:
        target = row["target"]
        name = f"msa(alpha={alpha:g},beta={beta:g})" if isinstance(target, Point) else target.role
        scores[name] = {split: {k: round(v, 4) if isinstance(v, float) else v for k, v in row[split].items()}
                        for split in splits}
    return scores
