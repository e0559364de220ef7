"""What an experiment is: checkpoint folders, evaluation data, coefficient ranges.

An experiment file is small human-readable YAML; relative paths resolve against the
file's own folder, so a demo folder can be moved as a whole::

    name: demo
    checkpoints:
      clean: models/clean          # before the model saw the forget data
      corrupted: models/corrupted  # the final model that did see it
      forget: models/forget        # clean fine-tuned on the forget set
      retain: models/retain        # clean fine-tuned on a retain sample
      reference: models/reference  # optional: the ideal (retain-only) model
    data:
      tofu: data/tofu              # optional: TOFU-format folder
      forget_split: forget10
      retain_split: retain_perturbed
      holdout_split: holdout10
      muse: data/muse              # optional: MUSE-format folder
    reference_eval: null           # optional: open-unlearning TOFU_EVAL.json
    prompt_format: auto            # auto | plain | chat | open-unlearning-tofu (msa_core.prompts)
    conventions: {}                # optional metric conventions (msa_core.conventions)
    alpha_range: [0.0, 5.0]
    beta_range: [0.0, 5.0]
    clean_history:                 # optional: other candidate θ_clean checkpoints, oldest first
      - label: pretrain-e10        # unique, [A-Za-z0-9_.-]+ ; "default" means checkpoints: above
        clean: models/history/pretrain-e10
        forget: models/history/pretrain-e10-forget   # that clean fine-tuned on the forget set
        retain: models/history/pretrain-e10-retain   # that clean fine-tuned on the retain set
        before_forget: true        # optional: did this checkpoint precede the forget data?
        step: 10                   # optional number (step / epoch / tokens) for ordering and plots

:func:`load_experiment` validates every field and path, raising an error that names it.
The clean history is not part of the experiment's fingerprint (msa_core.fingerprints): a
choice among its candidates is a derived experiment with its own (msa_core.choices).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from msa_core.atomic import write_text
from msa_core.conventions import DEFAULT_CONVENTIONS, check_conventions
from msa_core.prompts import DEFAULT_PROMPT_FORMAT, check_prompt_format
from msa_core.untrusted import read_text

CHECKPOINT_ROLES = ("clean", "corrupted", "forget", "retain")
OPTIONAL_ROLES = ("reference",)
DEFAULT_ALPHA_RANGE = (0.0, 5.0)
DEFAULT_BETA_RANGE = (0.0, 5.0)
# A split is a file or folder name inside the data folder (forget10, retain_perturbed, ...):
# no path separators, so a name like ``../../x`` cannot read outside it.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# A clean-history label: it appears in choice labels, plot legends and URLs.
_CANDIDATE_LABEL = re.compile(r"[A-Za-z0-9_.\-]+")
# The label of the experiment's own checkpoints (``checkpoints:``) among the θ_clean candidates.
DEFAULT_CANDIDATE = "default"
# The task-vector baseline's candidate label: θ_clean = θ_corrupted (msa init --task-vector).
TASK_VECTOR_LABEL = "task-vector"
CANDIDATE_ROLES = ("clean", "forget", "retain")
_CANDIDATE_KEYS = ("label", *CANDIDATE_ROLES, "before_forget", "step")


def check_split_name(value: Any, where: str) -> str:
    """``value`` if it is a plain split name (see ``_SPLIT_NAME``), else a ValueError naming ``where``."""
    if not isinstance(value, str) or not _SPLIT_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{where}: {value!r:.100} is not a split name (letters, digits, '_', '-' and '.'; "
            "no path separators or '..', so it stays inside the data folder)"
        )
    return value


@dataclass(frozen=True)
class Checkpoints:
    """Local Hugging Face model folders, one per role."""

    clean: Path
    corrupted: Path
    forget: Path
    retain: Path
    reference: Optional[Path] = None

    def as_dict(self, include_reference: bool = True) -> dict[str, Path]:
        """Role → folder, in canonical order (reference last, only when set)."""
        roles = {r: getattr(self, r) for r in CHECKPOINT_ROLES}
        if include_reference and self.reference is not None:
            roles["reference"] = self.reference
        return roles


@dataclass(frozen=True)
class CleanCandidate:
    """One candidate θ_clean with its forget and retain fine-tunes (an entry of ``clean_history``).

    ``before_forget``: whether this checkpoint precedes the forget data (None: unknown; the
    task-vector baseline, θ_clean = θ_corrupted, is False). ``step``: training step, epoch or
    tokens seen, for ordering and plots (None: not given).
    """

    label: str
    clean: Path
    forget: Path
    retain: Path
    before_forget: Optional[bool] = None
    step: Optional[float] = None


@dataclass(frozen=True)
class DataConfig:
    """Where the evaluation data lives and which splits to use."""

    tofu: Optional[Path] = None
    forget_split: str = "forget10"
    retain_split: str = "retain_perturbed"
    holdout_split: str = "holdout10"
    muse: Optional[Path] = None


@dataclass(frozen=True)
class Experiment:
    """A complete MSA experiment, as read from (or written to) an experiment file."""

    name: str
    checkpoints: Checkpoints
    data: DataConfig = field(default_factory=DataConfig)
    reference_eval: Optional[Path] = None
    alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE
    beta_range: tuple[float, float] = DEFAULT_BETA_RANGE
    trust_remote_code: bool = False
    source: Optional[Path] = None
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    # (name, choice) pairs (a tuple, so experiments stay hashable); see :attr:`metric_conventions`.
    conventions: tuple[tuple[str, str], ...] = tuple(DEFAULT_CONVENTIONS.items())
    # Other candidate θ_clean checkpoints, oldest first (msa_core.choices); not fingerprinted.
    clean_history: tuple[CleanCandidate, ...] = ()

    @property
    def benchmarks(self) -> tuple[str, ...]:
        """The benchmarks this experiment has data for: ('tofu',), ('muse',), both, or ()."""
        folders = (("tofu", self.data.tofu), ("muse", self.data.muse))
        return tuple(name for name, folder in folders if folder is not None)

    @property
    def metric_conventions(self) -> dict[str, str]:
        """Convention name → choice (:mod:`msa_core.conventions`), defaults filled in."""
        return check_conventions(dict(self.conventions))

    def validate_coefficients(self, alpha: float, beta: float) -> None:
        """Raise ValueError if α or β is non-finite or outside the experiment's range."""
        validate_coefficients(alpha, beta, self.alpha_range, self.beta_range)


def validate_coefficients(
    alpha: float,
    beta: float,
    alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE,
    beta_range: tuple[float, float] = DEFAULT_BETA_RANGE,
) -> None:
    """Raise ValueError naming the coefficient if it is non-finite or out of range."""
    for name, value, (lo, hi) in (("alpha", alpha, alpha_range), ("beta", beta, beta_range)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{name}={v} is outside the allowed range [{lo}, {hi}]")


def _resolve(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{where}: expected a path string, got {value!r}")
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p).resolve()


def _check_model_folder(path: Path, where: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{where}: model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{where}: {path} has no config.json (not a Hugging Face model folder)")
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise FileNotFoundError(f"{where}: {path} has no *.safetensors (or *.bin) weight files")


def _range(raw: Any, default: tuple[float, float], where: str) -> tuple[float, float]:
    if raw is None:
        return default
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise ValueError(f"{where}: expected [low, high], got {raw!r}")
    try:
        lo, hi = float(raw[0]), float(raw[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bounds must be numbers, got {raw!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{where}: need finite low <= high, got {raw!r}")
    return (lo, hi)


def check_candidate_label(value: Any, where: str) -> str:
    """``value`` if it is a usable clean-history label, else a ValueError naming ``where``."""
    if not isinstance(value, str) or not _CANDIDATE_LABEL.fullmatch(value):
        raise ValueError(f"{where}: {value!r:.100} is not a label (letters, digits, '_', '-' and '.')")
    if value == DEFAULT_CANDIDATE:
        raise ValueError(f"{where}: {DEFAULT_CANDIDATE!r} is reserved for the experiment's own checkpoints")
    return value


def _candidate_from_dict(raw: Any, base: Path, where: str, check_paths: bool) -> CleanCandidate:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping with label/clean/forget/retain, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _CANDIDATE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {list(_CANDIDATE_KEYS)}")
    for key in ("label", *CANDIDATE_ROLES):
        if raw.get(key) is None:
            raise KeyError(f"{where}.{key} is missing")
    label = check_candidate_label(raw["label"], f"{where}.label")
    folders = {role: _resolve(base, raw[role], f"{where}.{role}") for role in CANDIDATE_ROLES}
    if check_paths:
        for role, folder in folders.items():
            _check_model_folder(folder, f"{where}.{role}")
    before = raw.get("before_forget")
    if before is not None and not isinstance(before, bool):
        raise ValueError(f"{where}.before_forget: expected true or false, got {before!r:.100}")
    step = raw.get("step")
    if step is not None:
        try:
            number = float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{where}.step: expected a finite number, got {step!r:.100}")
        step = number
    return CleanCandidate(label=label, before_forget=before, step=step, **folders)


def check_clean_history(
    history: Any, base: Path, where: str = "clean_history", *, check_paths: bool = True
) -> tuple[CleanCandidate, ...]:
    """Parse and validate a ``clean_history`` list (None: empty); paths resolve against ``base``.

    Every entry needs a well-formed, unique label other than ``default`` and three model
    folders (checked when ``check_paths``); errors name ``clean_history[i].field``.
    """
    if history is None:
        return ()
    if not isinstance(history, (list, tuple)):
        raise ValueError(f"{where}: expected a list of checkpoints, got {type(history).__name__}")
    out: list[CleanCandidate] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(history):
        entry = raw
        if isinstance(raw, CleanCandidate):
            entry = {"label": raw.label, "clean": raw.clean, "forget": raw.forget, "retain": raw.retain,
                     "before_forget": raw.before_forget, "step": raw.step}
        cand = _candidate_from_dict(entry, base, f"{where}[{i}]", check_paths)
        if cand.label in seen:
            raise ValueError(f"{where}[{i}].label: {cand.label!r} is already used by {where}[{seen[cand.label]}]")
        seen[cand.label] = i
        out.append(cand)
    return tuple(out)


def experiment_from_dict(
    raw: Any, base: Path, *, source: Optional[Path] = None, check_paths: bool = True
) -> Experiment:
    """Build and validate an :class:`Experiment` from parsed YAML; paths resolve against ``base``."""
    where = str(source) if source else "experiment"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    ck = raw.get("checkpoints")
    if not isinstance(ck, dict):
        raise KeyError(f"{where}: missing 'checkpoints' mapping with clean/corrupted/forget/retain")
    unknown = set(ck) - set(CHECKPOINT_ROLES) - set(OPTIONAL_ROLES)
    if unknown:
        raise ValueError(f"{where}: unknown checkpoint role(s) {sorted(unknown)}")
    paths: dict[str, Optional[Path]] = {}
    for role in CHECKPOINT_ROLES:
        if role not in ck or ck[role] is None:
            raise KeyError(f"{where}: checkpoints.{role} is missing")
        paths[role] = _resolve(base, ck[role], f"{where}: checkpoints.{role}")
    paths["reference"] = (
        _resolve(base, ck["reference"], f"{where}: checkpoints.reference") if ck.get("reference") else None
    )
    if check_paths:
        for role, p in paths.items():
            if p is not None:
                _check_model_folder(p, f"{where}: checkpoints.{role}")

    data_raw = raw.get("data") or {}
    if not isinstance(data_raw, dict):
        raise ValueError(f"{where}: 'data' must be a mapping")
    data_kwargs: dict[str, Any] = {}
    for key in ("tofu", "muse"):
        if data_raw.get(key):
            p = _resolve(base, data_raw[key], f"{where}: data.{key}")
            if check_paths and not p.is_dir():
                raise FileNotFoundError(f"{where}: data.{key} folder {p} does not exist")
            data_kwargs[key] = p
    for key in ("forget_split", "retain_split", "holdout_split"):
        if key in data_raw and data_raw[key] is not None:
            data_kwargs[key] = check_split_name(data_raw[key], f"{where}: data.{key}")

    ref_eval = None
    if raw.get("reference_eval"):
        ref_eval = _resolve(base, raw["reference_eval"], f"{where}: reference_eval")
        if check_paths and not ref_eval.is_file():
            raise FileNotFoundError(f"{where}: reference_eval file {ref_eval} does not exist")

    name = raw.get("name") or (source.stem if source else "experiment")
    if not isinstance(name, str):
        raise ValueError(f"{where}: name must be a string")
    trc = raw.get("trust_remote_code", False)
    if not isinstance(trc, bool):
        raise ValueError(f"{where}: trust_remote_code must be true or false")
    return Experiment(
        name=name,
        checkpoints=Checkpoints(**paths),  # type: ignore[arg-type]
        data=DataConfig(**data_kwargs),
        reference_eval=ref_eval,
        alpha_range=_range(raw.get("alpha_range"), DEFAULT_ALPHA_RANGE, f"{where}: alpha_range"),
        beta_range=_range(raw.get("beta_range"), DEFAULT_BETA_RANGE, f"{where}: beta_range"),
        trust_remote_code=trc,
        source=source,
        prompt_format=check_prompt_format(raw.get("prompt_format") or DEFAULT_PROMPT_FORMAT, f"{where}: prompt_format"),
        conventions=tuple(check_conventions(raw.get("conventions"), f"{where}: conventions").items()),
        clean_history=check_clean_history(
            raw.get("clean_history"), base, f"{where}: clean_history", check_paths=check_paths
        ),
    )


def load_experiment(path: str | os.PathLike[str], *, check_paths: bool = True) -> Experiment:
    """Read and validate an experiment YAML file."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"experiment file {p} does not exist")
    try:
        raw = yaml.safe_load(read_text(p))
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    return experiment_from_dict(raw, p.parent, source=p, check_paths=check_paths)


def experiment_to_dict(exp: Experiment, base: Optional[Path] = None) -> dict[str, Any]:
    """A YAML-ready dict; paths are written relative to ``base`` when they lie under it."""

    def rel(p: Optional[Path]) -> Optional[str]:
        if p is None:
            return None
        if base is not None:
            try:
                return str(Path(p).resolve().relative_to(Path(base).resolve()))
            except ValueError:
                pass
        return str(p)

    ck = {role: rel(path) for role, path in exp.checkpoints.as_dict().items()}
    data = {
        "tofu": rel(exp.data.tofu),
        "forget_split": exp.data.forget_split,
        "retain_split": exp.data.retain_split,
        "holdout_split": exp.data.holdout_split,
        "muse": rel(exp.data.muse),
    }
    out: dict[str, Any] = {
        "name": exp.name,
        "checkpoints": ck,
        "data": data,
        "reference_eval": rel(exp.reference_eval),
        "alpha_range": list(exp.alpha_range),
        "beta_range": list(exp.beta_range),
        "trust_remote_code": exp.trust_remote_code,
        "prompt_format": exp.prompt_format,
        "conventions": exp.metric_conventions,
    }
    if exp.clean_history:  # written only when present, so files without one stay as they were
        out["clean_history"] = [_candidate_to_dict(c, rel) for c in exp.clean_history]
    return out


def _candidate_to_dict(cand: CleanCandidate, rel: Callable[[Optional[Path]], Optional[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"label": cand.label, **{role: rel(getattr(cand, role)) for role in CANDIDATE_ROLES}}
    if cand.before_forget is not None:
        out["before_forget"] = cand.before_forget
    if cand.step is not None:
        out["step"] = int(cand.step) if float(cand.step).is_integer() else cand.step
    return out


def save_experiment(exp: Experiment, path: str | os.PathLike[str]) -> Path:
    """Write ``exp`` as YAML atomically (:mod:`msa_core.atomic`); returns the path written."""
    p = Path(path).expanduser().resolve()
    return write_text(p, yaml.safe_dump(experiment_to_dict(exp, p.parent), sort_keys=False))


def replace_ranges(
    exp: Experiment,
    *,
    alpha_range: Optional[tuple[float, float]] = None,
    beta_range: Optional[tuple[float, float]] = None,
) -> Experiment:
    """A copy of ``exp`` with new α/β ranges (validated like the file's)."""
    return replace(
        exp,
        alpha_range=_range(alpha_range, exp.alpha_range, "alpha_range"),
        beta_range=_range(beta_range, exp.beta_range, "beta_range"),
    )
