"""What a fine-tune trains on: data specs, local TOFU/MUSE loading, the retain-sample rule.

A data spec names one training set:

- ``tofu:SPLIT`` — a TOFU split as it is (``forget01``, ``forget10``, ``full``, ``retain90``,
  …) read from a TOFU-format folder (``{split}.json``/``.jsonl``/``.parquet`` or a
  ``datasets.save_to_disk`` folder) through :func:`msa_core.eval.data.load_tofu_split`;
- ``tofu:retainXX_ft`` — the reference recipe's retain sample: a seeded random sample of
  ``retainXX`` holding ``(100 − XX)%`` of its rows (:func:`retain_ft_indices`);
- ``muse:PATH`` — raw texts, e.g. ``muse:news/raw/forget`` reads ``news/raw/forget.json``
  (a JSON array of strings) or ``.jsonl`` (strings or ``{"text": …}`` rows) under the MUSE
  folder.

Everything is read from local files; nothing is fetched from a hub. Every error names the
spec, the folder or file, and (for an unknown split) the splits that exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msa_core.eval.data import find_split_file, load_tofu_split
from msa_core.experiment import check_split_name
from msa_core.untrusted import read_text

# The reference recipe (MSA paper's scripts, configs/data/TOFU_QA_retainXX_ft.yaml and
# src/data/datasets.py) draws its retain sample with seed 42.
RETAIN_FT_SEED = 42
_RETAIN_FT = re.compile(r"^retain(\d{2})_ft$")
_TOFU_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: ``source`` ("tofu" | "muse") and ``name`` (split or MUSE path).

    ``retain_of`` / ``fraction`` are set for ``tofu:retainXX_ft`` (the split sampled from and
    the share of its rows kept)."""

    source: str
    name: str
    retain_of: str | None = None
    fraction: float | None = None

    @property
    def text(self) -> str:
        """The spec as written on the command line, e.g. ``tofu:forget10``."""
        return f"{self.source}:{self.name}"


@dataclass(frozen=True)
class TrainingData:
    """One training set in memory.

    ``kind`` is "qa" (``pairs`` of question/answer; the prompt is masked in training) or
    "text" (raw ``texts``, every token trained). ``signature`` is a content hash of the spec
    name, kind and every pair/text, so a changed file never reuses an old fine-tune."""

    name: str
    kind: str
    pairs: tuple[tuple[str, str], ...]
    texts: tuple[str, ...]
    signature: str

    def __len__(self) -> int:
        return len(self.pairs) if self.kind == "qa" else len(self.texts)


def _signature(name: str, kind: str, content: Sequence[object]) -> str:
    h = hashlib.sha256(b"msa-training-data-v1;")
    h.update(json.dumps([name, kind, list(content)], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:32]


def qa_data(name: str, pairs: Sequence[tuple[str, str]]) -> TrainingData:
    """A QA training set built in memory (e.g. the demo's generated sets); ValueError if empty
    or if a pair is not two non-empty strings."""
    clean: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)):
            raise ValueError(f"training data {name!r}: pair {i} must be (question, answer) non-empty strings")
        clean.append((pair[0], pair[1]))
    if not clean:
        raise ValueError(f"training data {name!r} is empty (no question/answer pairs)")
    return TrainingData(name, "qa", tuple(clean), (), _signature(name, "qa", clean))


def text_data(name: str, texts: Sequence[str]) -> TrainingData:
    """A raw-text training set built in memory; ValueError if empty or a text is blank."""
    clean = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"training data {name!r}: text {i} must be a non-empty string")
        clean.append(t)
    if not clean:
        raise ValueError(f"training data {name!r} is empty (no texts)")
    return TrainingData(name, "text", (), tuple(clean), _signature(name, "text", clean))


def parse_data_spec(text: str) -> DataSpec:
    """``tofu:SPLIT`` | ``tofu:retainXX_ft`` | ``muse:PART/…/NAME`` → DataSpec (ValueError naming it)."""
    source, sep, name = str(text).partition(":")
    if not sep or source not in ("tofu", "muse") or not name:
        raise ValueError(
            f"data spec {text!r}: expected tofu:SPLIT (e.g. tofu:forget10, tofu:retain90_ft, tofu:full) "
            "or muse:PATH (e.g. muse:news/raw/forget)"
        )
    if source == "tofu":
        check_split_name(name, f"data spec {text!r}")
        m = _RETAIN_FT.fullmatch(name)
        if m:
            pct = int(m.group(1))
            if not 0 < pct < 100:
                raise ValueError(f"data spec {text!r}: retainXX_ft needs 0 < XX < 100")
            # (100 − XX)/100 is the same double as the reference configs' literals 0.01/0.05/0.1.
            return DataSpec("tofu", name, retain_of=f"retain{m.group(1)}", fraction=(100 - pct) / 100)
        return DataSpec("tofu", name)
    for part in name.split("/"):
        check_split_name(part, f"data spec {text!r}")
    return DataSpec("muse", name)


def retain_ft_size(n_retain: int, fraction: float) -> int:
    """Rows kept of an ``n_retain``-row split: ``int(n_retain × fraction)`` (floor), as the
    reference recipe's ``keep_n = int(len(ds) * sample_fraction)``."""
    return int(n_retain * fraction)


def retain_ft_indices(n_retain: int, n_sample: int, seed: int = RETAIN_FT_SEED) -> list[int]:
    """The reference recipe's retain sample: row indices, in sampled order.

    The reference does ``ds.shuffle(seed=42).select(range(keep_n))`` with Hugging Face
    ``datasets``, whose shuffle is ``numpy.random.default_rng(seed).permutation(len(ds))``
    (PCG64); the sample is that permutation's first ``n_sample`` entries.
    """
    if n_retain < 0 or not 0 <= n_sample <= n_retain:
        raise ValueError(f"retain sample: need 0 <= n_sample ({n_sample}) <= n_retain ({n_retain})")
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n_retain)[:n_sample]]


def available_tofu_splits(folder: Path) -> list[str]:
    """Split names a TOFU folder holds (files and saved-dataset folders), sorted."""
    names: set[str] = set()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        if p.is_file() and p.suffix in _TOFU_FILE_SUFFIXES:
            names.add(p.stem)
        elif p.is_dir() and any((p / m).is_file() for m in ("dataset_info.json", "dataset_dict.json", "state.json")):
            names.add(p.name)
    return sorted(names)


def _tofu_pairs(spec_text: str, folder: Path, split: str) -> tuple[tuple[str, str], ...]:
    if not folder.is_dir():
        raise FileNotFoundError(f"data spec {spec_text!r}: TOFU data folder {folder} does not exist")
    try:
        find_split_file(folder, split)
    except FileNotFoundError:
        have = available_tofu_splits(folder)
        raise FileNotFoundError(
            f"data spec {spec_text!r}: no split {split!r} in {folder}; it holds: {', '.join(have) or 'no splits'}"
        ) from None
    loaded = load_tofu_split(folder, split, kind="plain")
    return tuple((it.question, it.answer) for it in loaded.items)


def _muse_file(spec_text: str, folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"data spec {spec_text!r}: MUSE data folder {folder} does not exist")
    for suffix in (".json", ".jsonl"):
        cand = folder / f"{name}{suffix}"
        if cand.is_file():
            return cand
    parent = (folder / name).parent
    have = sorted(p.stem for p in parent.glob("*.json*")) if parent.is_dir() else []
    raise FileNotFoundError(
        f"data spec {spec_text!r}: neither {name}.json nor {name}.jsonl in {folder}"
        + (f"; {parent} holds: {', '.join(have)}" if have else f"; {parent} does not exist")
    )


def _muse_texts(spec_text: str, path: Path) -> list[str]:
    raw = read_text(path)
    rows: list[object] = []
    try:
        data = json.loads(raw)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    texts = []
    for i, row in enumerate(rows):
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise ValueError(f"{path}: row {i} must be a string or an object with a 'text' string")
        if text.strip():  # blank rows carry no tokens (MUSE-News raw/forget.json has one, row 821)
            texts.append(text)
    if not texts:
        raise ValueError(f"data spec {spec_text!r}: {path} is empty (no texts)")
    return texts


def load_training_data(spec_text: str, data_dir: Path) -> TrainingData:
    """Load one data spec from a local folder, validated (see the module docstring).

    ``data_dir`` is the TOFU folder for ``tofu:`` specs and the MUSE folder for ``muse:``.
    """
    spec = parse_data_spec(spec_text)
    folder = Path(data_dir).expanduser()
    if spec.source == "muse":
        texts = _muse_texts(spec.text, _muse_file(spec.text, folder, spec.name))
        return text_data(spec.text, texts)
    if spec.retain_of is not None and spec.fraction is not None:
        full = _tofu_pairs(spec.text, folder, spec.retain_of)
        n = retain_ft_size(len(full), spec.fraction)
        if n == 0:
            raise ValueError(
                f"data spec {spec.text!r}: {spec.fraction:.0%} of the {len(full)} rows of "
                f"{spec.retain_of!r} in {folder} is no rows"
            )
        pairs = tuple(full[i] for i in retain_ft_indices(len(full), n))
    else:
        pairs = _tofu_pairs(spec.text, folder, spec.name)
    return qa_data(spec.text, pairs)
