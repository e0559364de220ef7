"""From a clean checkpoint to a ready experiment: the MSA recipe's fine-tunes and ``experiment.yaml``.

The method needs, besides θ_clean, three fine-tunes of it (arXiv 2506.20941, and the
reference scripts' dataset names):

- ``forget``: θ_clean fine-tuned on the forget split (``tofu:forget10``);
- ``retain``: θ_clean fine-tuned on a seeded sample of the retain split the size of the
  forget set (``tofu:retain90_ft``, :func:`msa_core.finetune.retain_ft_indices`);
- ``corrupted``: θ_clean fine-tuned on the full set (``tofu:full``), or a given folder;
- ``reference`` (optional): θ_clean fine-tuned on the whole retain split
  (``tofu:retain90``, TOFU's retain model).

A role may train on extra data besides its split (:attr:`Stages.extra`, ``msa init --add
ROLE=SPEC``), e.g. the MUSE-format raw texts of the authors (``muse:raw/forget``, read from
the MUSE folder ``--muse-dir``): the embedded demo's fine-tunes also learn the biographies,
so the MUSE metrics (verbmem, PrivLeak) have something to measure.

:func:`train_checkpoints` runs them with :func:`msa_core.finetune.finetune` — the one
training path of the project, also used by the embedded demo — each into ``OUT/<role>``;
a folder whose card matches (same base fingerprint, data signature and settings) is
reused, so a second run trains nothing. :func:`init_experiment` then writes
``OUT/experiment.yaml`` naming all checkpoints and the data folder, so
``msa init … && streamlit run app.py`` is the whole path. ``OUT`` holds the marker
:data:`MARKER`; a folder that is neither empty nor marked is refused (never written into).

The task-vector baseline (the paper's "MSA from the final model", ``msa init --task-vector``):
θ_corrupted fine-tuned on the forget and on the retain data (the forget/retain roles' data
and settings) into ``OUT/task-vector/forget`` and ``OUT/task-vector/retain``, written as the
``clean_history`` candidate :data:`TASK_VECTOR` (clean = the corrupted folder, before_forget
false). :func:`train_candidate` makes any such candidate (the embedded demo also uses it for
an earlier θ_clean checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.atomic import write_text
from msa_core.experiment import TASK_VECTOR_LABEL as TASK_VECTOR
from msa_core.experiment import Checkpoints, DataConfig, Experiment, check_split_name, save_experiment
from msa_core.finetune import (
    FinetuneResult,
    TrainConfig,
    TrainingData,
    finetune,
    load_training_data,
    parse_data_spec,
    read_card,
)
from msa_core.finetune.data import available_tofu_splits
from msa_core.finetune.train import check_causal_lm
from msa_core.progress import Progress, report, sub_progress

if TYPE_CHECKING:
    from msa_core.experiment import CleanCandidate

MARKER = "msa_init.json"
# Roles in training order: the cheap forget/retain runs first, so a bad setting shows early.
ROLES = ("forget", "retain", "corrupted", "reference")
_FORGET = re.compile(r"forget(\d\d)")
# The roles of a candidate's fine-tunes (the task-vector candidate: label and folder TASK_VECTOR inside OUT).
CANDIDATE_ROLES = ("forget", "retain")


@dataclass(frozen=True)
class Stages:
    """Which TOFU-format splits the fine-tunes use (names inside the data folder).

    ``retain`` None means the retain split matching ``forget`` (forget10 → retain90,
    forget05 → retain95, forget01 → retain99); ``full`` None means use ``corrupted``
    (an existing folder) instead of training one; ``reference`` trains TOFU's retain model.
    ``extra`` maps a role to more data specs it trains on after its split, in order
    (``tofu:SPLIT`` from the data folder, ``muse:PATH`` from the MUSE folder; ``msa init --add``).
    """

    forget: str = "forget10"
    retain: Optional[str] = None
    full: Optional[str] = "full"
    corrupted: Optional[Path] = None
    reference: bool = False
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def retain_split(self) -> str:
        """The retain split: given, or the complement of ``forget`` (forgetNN → retain(100−NN))."""
        if self.retain is not None:
            return check_split_name(self.retain, "--retain")
        found = _FORGET.fullmatch(self.forget)
        if found is None:
            raise ValueError(f"--forget {self.forget!r}: no matching retain split to derive; give --retain")
        return f"retain{100 - int(found.group(1)):02d}"

    def specs(self) -> dict[str, str]:
        """Role → data spec text (``tofu:<split>``) of every fine-tune to run."""
        check_split_name(self.forget, "--forget")
        retain = self.retain_split()
        out = {"forget": f"tofu:{self.forget}", "retain": f"tofu:{retain}_ft"}
        if self.full is not None:
            if self.corrupted is not None:
                raise ValueError("give either a full split to train the corrupted model on, or --corrupted, not both")
            out["corrupted"] = f"tofu:{check_split_name(self.full, '--full')}"
        elif self.corrupted is None:
            raise ValueError("no corrupted model: give a full split (--full full) or an existing one (--corrupted)")
        if self.reference:
            out["reference"] = f"tofu:{retain}"
        return out

    def all_specs(self) -> dict[str, tuple[str, ...]]:
        """Role → every data spec it trains on: its split's, then its :attr:`extra` ones.

        A ValueError names the ``--add`` of an unknown role, of a role not trained here
        (e.g. ``reference`` without ``--reference``) or of a malformed spec.
        """
        main = self.specs()
        out = {role: (spec,) for role, spec in main.items()}
        for role, specs in self.extra.items():
            for spec in specs:
                item = f"{role}={spec}"
                if role not in ROLES:
                    raise ValueError(f"--add {item!r}: unknown role {role!r}; expected one of {list(ROLES)}")
                if role not in main:
                    raise ValueError(f"--add {item!r}: the {role} model is not trained in this run "
                                     f"(trained: {', '.join(main)})")
                try:
                    parse_data_spec(spec)
                except ValueError as exc:
                    raise ValueError(f"--add {item!r}: {exc}") from None
                out[role] += (spec,)
        return out


def parse_extra_data(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Role → extra data specs from ``ROLE=SPEC`` items (``msa init --add``), in the order given.

    E.g. ``["corrupted=muse:raw/forget", "corrupted=muse:raw/retain"]``. Errors name the item;
    the roles and specs are checked against the run by :meth:`Stages.all_specs`.
    """
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        role, sep, spec = str(item).partition("=")
        role, spec = role.strip(), spec.strip()
        if not sep or not role or not spec:
            raise ValueError(f"--add {item!r}: expected ROLE=SPEC, e.g. corrupted=muse:raw/forget")
        if role not in ROLES:
            raise ValueError(f"--add {item!r}: unknown role {role!r}; expected one of {list(ROLES)}")
        try:
            parse_data_spec(spec)
        except ValueError as exc:
            raise ValueError(f"--add {item!r}: {exc}") from None
        out[role] = out.get(role, ()) + (spec,)
    return out


@dataclass(frozen=True)
class InitResult:
    """What :func:`init_experiment` made: the experiment file and each fine-tune's result."""

    experiment: Path
    runs: dict[str, FinetuneResult] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (paths as strings)."""
        return {
            "experiment": str(self.experiment),
            "seconds": round(self.seconds, 2),
            "runs": {role: {"out": str(r.out), "reused": r.reused, "resumed": r.resumed,
                            "epochs_done": r.epochs_done, "final_loss": r.final_loss,
                            "seconds": round(r.seconds, 2)} for role, r in self.runs.items()},
        }


def parse_role_settings(config: TrainConfig, settings: Sequence[str]) -> dict[str, TrainConfig]:
    """Per-role TrainConfigs from ``ROLE.FIELD=VALUE`` settings (``msa init --set``).

    E.g. ``["forget.lr=3e-4", "forget.epochs=24"]`` gives the forget fine-tune ``config`` with
    those two fields replaced; roles not named use ``config``. The value is read as the
    field's type (int, float, bool, str); errors name the setting.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, dict[str, Any]] = {}
    for item in settings:
        target, sep, raw = str(item).partition("=")
        role, dot, name = target.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: expected ROLE.FIELD=VALUE, e.g. forget.lr=3e-4")
        if role not in ROLES:
            raise ValueError(f"--set {item!r}: unknown role {role!r}; expected one of {list(ROLES)}")
        if name not in fields:
            raise ValueError(f"--set {item!r}: TrainConfig has no field {name!r}; it has {sorted(fields)}")
        changes.setdefault(role, {})[name] = _typed(getattr(config, name), raw.strip(), item)
    return {role: dataclasses.replace(config, **kw) for role, kw in changes.items()}


def _typed(current: Any, raw: str, item: str) -> Any:
    # The default's type decides how the text is read (None-valued fields take an int).
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, int) or current is None:
            return int(raw)
    except ValueError:
        raise ValueError(f"--set {item!r}: {raw!r} is not a valid {type(current).__name__}") from None
    return raw


def _check_clean(clean: Path, what: str = "clean checkpoint") -> Path:
    clean = Path(clean).expanduser().resolve()
    if not clean.is_dir():
        raise FileNotFoundError(f"{what} {clean} does not exist")
    if not (clean / "config.json").is_file():
        raise FileNotFoundError(f"{what} {clean} has no config.json (not a Hugging Face model folder)")
    check_causal_lm(clean)  # e.g. an encoder-only model: named before anything is trained
    return clean


def _check_out(out: Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.is_file():
        raise FileExistsError(f"output folder {out} is a file")
    if out.is_dir() and not (out / MARKER).is_file() and not all(_made_by_finetune(p) for p in out.iterdir()):
        raise FileExistsError(
            f"output folder {out} exists, is not empty and was not made by `msa init` (no {MARKER}); "
            "choose another --out folder"
        )
    return out


def _made_by_finetune(entry: Path) -> bool:
    # A folder of stages run beforehand with `msa finetune --out OUT/<role>` (e.g. each under
    # `accelerate launch` on several GPUs) is taken as is: init then reuses those fine-tunes.
    if entry.name in ROLES:
        return entry.is_dir() and read_card(entry) is not None
    if entry.name == TASK_VECTOR:
        return entry.is_dir() and all(p.name in CANDIDATE_ROLES + tuple(f".{r}.train" for r in CANDIDATE_ROLES)
                                      and _made_by_finetune(p) for p in entry.iterdir())
    return entry.name in {f".{role}.train" for role in ROLES}


def load_stage_data(data_dir: Path, stages: Stages,
                    muse_dir: Optional[Path] = None) -> dict[str, list[TrainingData]]:
    """Role → its validated training sets (split first, then :attr:`Stages.extra`), all read
    before any training (a bad split or file fails first).

    ``tofu:`` specs read from ``data_dir``, ``muse:`` specs from ``muse_dir`` (the MUSE-format
    folder; a ``muse:`` spec without one is refused, naming it).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    muse = None if muse_dir is None else Path(muse_dir).expanduser().resolve()
    out: dict[str, list[TrainingData]] = {}
    for role, specs in stages.all_specs().items():
        sets = []
        for spec in specs:
            if parse_data_spec(spec).source == "muse":
                if muse is None:
                    raise ValueError(f"--add {role}={spec}: a muse: spec needs the MUSE data folder (--muse-dir)")
                if not muse.is_dir():
                    raise FileNotFoundError(f"--muse-dir {muse}: MUSE data folder does not exist")
                sets.append(load_training_data(spec, muse))
            else:
                sets.append(load_training_data(spec, data_dir))
        out[role] = sets
    return out


def _as_sets(data: TrainingData | Sequence[TrainingData]) -> list[TrainingData]:
    return [data] if isinstance(data, TrainingData) else list(data)


def train_checkpoints(clean: Path, data: Mapping[str, TrainingData | Sequence[TrainingData]], out: Path,
                      config: TrainConfig, *,
                      role_configs: Optional[Mapping[str, TrainConfig]] = None,
                      progress: Optional[Progress] = None, reuse: bool = True) -> dict[str, FinetuneResult]:
    """Fine-tune ``clean`` once per role of ``data`` into ``out/<role>`` (reused when the card matches).

    Each role trains on its training set, or its list of sets concatenated (the card records
    every set's name and signature, so a changed extra set is never reused).
    ``role_configs`` overrides ``config`` per role. The progress bar is shared out by each
    role's examples × epochs.
    """
    clean = _check_clean(clean)
    unknown = set(data) - set(ROLES)
    if unknown:
        raise KeyError(f"unknown fine-tune role(s) {sorted(unknown)}; expected some of {list(ROLES)}")
    sets = {role: _as_sets(d) for role, d in data.items()}
    empty = sorted(role for role, s in sets.items() if not s)
    if empty:
        raise ValueError(f"no training data for role(s) {empty}")
    configs = {role: (role_configs or {}).get(role, config) for role in data}
    weights = {role: max(1, sum(len(d) for d in s)) * configs[role].epochs for role, s in sets.items()}
    total, done = float(sum(weights.values())), 0.0
    runs: dict[str, FinetuneResult] = {}
    for role in (r for r in ROLES if r in data):
        span = sub_progress(progress, done / total, (done + weights[role]) / total)
        report(span, 0.0, f"{role}: fine-tuning on {' + '.join(d.name for d in sets[role])}")
        # A single set is passed as is: its card (and so reuse of older fine-tunes) is unchanged.
        role_data = sets[role][0] if len(sets[role]) == 1 else sets[role]
        runs[role] = finetune(clean, role_data, Path(out) / role, configs[role], progress=span, reuse=reuse)
        report(span, 1.0, f"{role}: {'reused' if runs[role].reused else 'trained'}")
        done += weights[role]
    return runs


def train_candidate(label: str, clean: Path, data: Mapping[str, TrainingData | Sequence[TrainingData]], out: Path,
                    config: TrainConfig, *, before_forget: Optional[bool] = None, step: Optional[float] = None,
                    role_configs: Optional[Mapping[str, TrainConfig]] = None, progress: Optional[Progress] = None,
                    reuse: bool = True) -> tuple[CleanCandidate, dict[str, FinetuneResult]]:
    """Fine-tune ``clean`` on the forget and retain data of ``data`` into ``out/forget`` and
    ``out/retain`` (:func:`train_checkpoints`, reused when the card matches) and describe the
    result as a ``clean_history`` candidate.

    ``data`` needs the ``forget`` and ``retain`` roles (others are ignored); ``role_configs``
    overrides ``config`` for them as in :func:`train_checkpoints`. The task-vector baseline is
    ``train_candidate(TASK_VECTOR, corrupted, …, before_forget=False)``.
    """
    from msa_core.experiment import CleanCandidate  # the clean-history names (owner: msa_core.experiment)

    missing = [role for role in CANDIDATE_ROLES if role not in data]
    if missing:
        raise KeyError(f"candidate {label!r}: no training data for role(s) {missing}")
    runs = train_checkpoints(clean, {role: data[role] for role in CANDIDATE_ROLES}, out, config,
                             role_configs=role_configs, progress=progress, reuse=reuse)
    candidate = CleanCandidate(label=label, clean=Path(clean).expanduser().resolve(), forget=runs["forget"].out,
                               retain=runs["retain"].out, before_forget=before_forget, step=step)
    return candidate, runs


def _eval_splits(data_dir: Path, forget: str, retain: str, muse_dir: Optional[Path] = None) -> DataConfig:
    # The evaluation splits TOFU ships: retain_perturbed (the evaluated retain items) and the
    # holdout split of the forget size, when the folder has them.
    present = set(available_tofu_splits(data_dir))
    retain_eval = "retain_perturbed" if "retain_perturbed" in present else retain
    found = _FORGET.fullmatch(forget)
    holdout = f"holdout{found.group(1)}" if found else DataConfig().holdout_split
    return DataConfig(tofu=data_dir, forget_split=forget, retain_split=retain_eval, holdout_split=holdout,
                      muse=muse_dir)


def init_experiment(clean: Path, data_dir: Path, out: Path, stages: Stages = Stages(),
                    config: Optional[TrainConfig] = None, *,
                    role_configs: Optional[Mapping[str, TrainConfig]] = None, name: Optional[str] = None,
                    muse_dir: Optional[Path] = None, progress: Optional[Progress] = None,
                    reuse: bool = True, task_vector: bool = False) -> InitResult:
    """Run (or reuse) the fine-tunes of ``stages`` from ``clean`` and write ``out/experiment.yaml``.

    ``config`` defaults to :class:`~msa_core.finetune.TrainConfig`'s (the reference recipe).
    ``muse_dir`` is the MUSE-format folder: ``muse:`` extra specs read from it, and the
    experiment's ``data.muse`` names it (so the MUSE metrics are computed on it).
    ``task_vector`` also fine-tunes θ_corrupted on the forget and retain data (same data and
    settings as the forget/retain roles) into ``out/task-vector/`` and lists that as the
    ``clean_history`` candidate :data:`TASK_VECTOR` (runs keyed ``task-vector/forget`` …).

    Every input is checked before anything is trained: the clean folder, the data folder
    and its splits, and ``out`` (absent, empty or made by a previous ``msa init``).
    """
    t0 = time.perf_counter()
    config = TrainConfig() if config is None else config
    clean = _check_clean(clean)
    data_dir = Path(data_dir).expanduser().resolve()
    out = _check_out(out)
    corrupted = None
    if stages.corrupted is not None:
        corrupted = _check_clean(stages.corrupted, "corrupted checkpoint")
    muse = None if muse_dir is None else Path(muse_dir).expanduser().resolve()
    if muse is not None and not muse.is_dir():
        raise FileNotFoundError(f"--muse-dir {muse}: MUSE data folder does not exist")
    data = load_stage_data(data_dir, stages, muse)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / MARKER, json.dumps({"made_by": "msa init", "clean": str(clean), "data_dir": str(data_dir),
                                         "muse_dir": None if muse is None else str(muse),
                                         "specs": stages.specs(), "task_vector": bool(task_vector),
                                         "extra": {r: list(s[1:]) for r, s in stages.all_specs().items() if s[1:]}},
                                        indent=1) + "\n")
    main_end = 0.8 if task_vector else 0.99
    runs = train_checkpoints(clean, data, out, config, role_configs=role_configs,
                             progress=sub_progress(progress, 0.0, main_end), reuse=reuse)
    ckpt = Checkpoints(clean=clean, corrupted=corrupted or runs["corrupted"].out, forget=runs["forget"].out,
                       retain=runs["retain"].out, reference=runs["reference"].out if "reference" in runs else None)
    history: dict[str, Any] = {}
    if task_vector:
        candidate, tv_runs = train_candidate(TASK_VECTOR, ckpt.corrupted, data, out / TASK_VECTOR, config,
                                             before_forget=False, role_configs=role_configs,
                                             progress=sub_progress(progress, main_end, 0.99), reuse=reuse)
        runs.update({f"{TASK_VECTOR}/{role}": run for role, run in tv_runs.items()})
        history["clean_history"] = (candidate,)
    exp = Experiment(name=name or out.name, checkpoints=ckpt,
                     data=_eval_splits(data_dir, stages.forget, stages.retain_split(), muse), **history)
    path = save_experiment(exp, out / "experiment.yaml")
    report(progress, 1.0, f"wrote {path}")
    return InitResult(experiment=path, runs=runs, seconds=time.perf_counter() - t0)
