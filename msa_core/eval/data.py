"""TOFU and MUSE data loaders with validation.

TOFU splits are read from a folder holding ``{split}.json`` (a JSON array, JSON lines,
or Hugging Face ``Dataset.to_json`` output whose lines are arrays), ``{split}.jsonl``,
``{split}.parquet`` or a ``{split}/`` folder written by ``datasets.save_to_disk``. Data
is only read from local folders; nothing is fetched from a hub.

MUSE folders hold ``knowmem/{forget_qa,forget_qa_icl,retain_qa|retain2_qa,
retain_qa_icl|retain2_qa_icl}.json``, ``verbmem/forget.json`` ([{prompt, gt}]) and
``privleak/{forget,retain|retain2,holdout}.json`` (lists of strings); each of the three
parts is loaded when its subfolder exists.

Every loader checks fields, types and counts and raises ValueError / KeyError /
FileNotFoundError naming the file, the row and the field at fault.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

from msa_core.experiment import check_split_name
from msa_core.untrusted import read_json, read_text

PathLike = Union[str, os.PathLike]

PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
OPTIONS_FIELDS = ("question", "answer", "perturbed_answer")
PLAIN_FIELDS = ("question", "answer")


@dataclass(frozen=True)
class TofuItem:
    """One TOFU row. ``paraphrased_answer`` is None for real-authors / world-facts rows."""

    question: str
    answer: str
    paraphrased_answer: Optional[str] = None
    perturbed_answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TofuSplit:
    """The validated rows of one TOFU split and the file they came from."""

    name: str
    source: str
    items: tuple[TofuItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: Optional[int]) -> TofuSplit:
        """The first ``n`` rows (all when n is None)."""
        return self if n is None else TofuSplit(self.name, self.source, self.items[: max(0, int(n))])


@dataclass(frozen=True)
class MuseData:
    """A MUSE folder's validated contents; a part is None when its subfolder is absent."""

    root: str
    knowmem_forget: Optional[tuple[tuple[str, str], ...]] = None
    knowmem_forget_icl: Optional[tuple[tuple[str, str], ...]] = None
    knowmem_retain: Optional[tuple[tuple[str, str], ...]] = None
    knowmem_retain_icl: Optional[tuple[tuple[str, str], ...]] = None
    verbmem_forget: Optional[tuple[tuple[str, str], ...]] = None  # (prompt, gt)
    privleak_forget: Optional[tuple[str, ...]] = None
    privleak_retain: Optional[tuple[str, ...]] = None
    privleak_holdout: Optional[tuple[str, ...]] = None


# ---------------------------------------------------------------- raw reading


def _read_json_rows(path: Path) -> list[Any]:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        rows: list[Any] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
            # HF Dataset.to_json may write several JSON arrays, one per line.
            rows.extend(obj if isinstance(obj, list) else [obj])
        return rows
    if isinstance(data, dict):
        for key in ("data", "rows", "train"):
            if isinstance(data.get(key), list):
                return list(data[key])
        raise ValueError(f"{path}: expected a JSON array of rows, got an object with keys {sorted(data)[:8]}")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return data


def _read_table(path: Path) -> list[Any]:
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1 and "train" not in ds:
                raise ValueError(f"{path}: a DatasetDict with splits {list(ds)}; expected one split or 'train'")
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return [dict(r) for r in ds]
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    return _read_json_rows(path)


def find_split_file(folder: Path, split: str) -> Path:
    """The file (or saved-dataset folder) holding ``split`` in ``folder``.

    ``split`` must be a plain name (checked again here, not only in the experiment file, so
    no caller can make ``../../x`` read outside the data folder).
    """
    check_split_name(split, f"TOFU split in {folder}")
    for cand in (folder / f"{split}.json", folder / f"{split}.jsonl", folder / f"{split}.parquet", folder / split):
        if cand.is_file():
            return cand
        markers = ("dataset_info.json", "dataset_dict.json", "state.json")
        if cand.is_dir() and any((cand / m).is_file() for m in markers):
            return cand
    raise FileNotFoundError(
        f"TOFU split {split!r} not found in {folder} "
        f"(looked for {split}.json, {split}.jsonl, {split}.parquet, {split}/)"
    )


# ---------------------------------------------------------------- validation


def _str_field(row: Any, key: str, where: str, i: int) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: row {i} is a {type(row).__name__}, expected an object")
    if key not in row or row[key] is None:
        raise KeyError(f"{where}: row {i} is missing field {key!r}")
    val = row[key]
    if not isinstance(val, str):
        raise ValueError(f"{where}: row {i} field {key!r} must be a string, got {type(val).__name__}")
    if not val.strip():
        raise ValueError(f"{where}: row {i} field {key!r} is empty")
    return val


def _str_list_field(row: dict, key: str, where: str, i: int) -> tuple[str, ...]:
    if key not in row or row[key] is None:
        raise KeyError(f"{where}: row {i} is missing field {key!r}")
    val = row[key]
    if hasattr(val, "tolist"):  # numpy arrays from parquet
        val = val.tolist()
    if not isinstance(val, (list, tuple)) or not val:
        raise ValueError(f"{where}: row {i} field {key!r} must be a non-empty list of strings")
    for j, s in enumerate(val):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"{where}: row {i} field {key!r}[{j}] must be a non-empty string")
    return tuple(val)


def split_kind(split: str) -> str:
    """'perturbed' (TOFU forget/retain _perturbed), 'options' (real authors / world facts) or 'plain'."""
    if split.startswith(("real_authors", "world_facts")) and split.endswith("_perturbed"):
        return "options"
    return "perturbed" if split.endswith("_perturbed") else "plain"


def validate_tofu_rows(
    rows: list[Any], where: str, split: str, *, kind: Optional[str] = None, n_perturbed: Optional[int] = None
) -> tuple[TofuItem, ...]:
    """Check every row of a split; return the items.

    ``perturbed`` rows need question/answer/paraphrased_answer/perturbed_answer, ``options``
    rows question/answer/perturbed_answer, ``plain`` rows question/answer. Every row of a
    split must have the same number of perturbed answers (``n_perturbed`` when given, else
    the most common count), as open-unlearning stacks them into one array.
    """
    kind = kind or split_kind(split)
    if not rows:
        raise ValueError(f"{where}: split {split!r} is empty (no rows)")
    items = []
    for i, row in enumerate(rows):
        q = _str_field(row, "question", where, i)
        a = _str_field(row, "answer", where, i)
        para = _str_field(row, "paraphrased_answer", where, i) if kind == "perturbed" else None
        pert = _str_list_field(row, "perturbed_answer", where, i) if kind in ("perturbed", "options") else ()
        items.append(TofuItem(q, a, para, pert))
    if kind != "plain":
        counts = Counter(len(it.perturbed_answers) for it in items)
        expected = n_perturbed if n_perturbed is not None else counts.most_common(1)[0][0]
        for i, it in enumerate(items):
            if len(it.perturbed_answers) != expected:
                raise ValueError(
                    f"{where}: row {i} field 'perturbed_answer' has {len(it.perturbed_answers)} answers, "
                    f"expected {expected} like the other rows of {split!r}"
                )
    return tuple(items)


def load_tofu_split(
    source: PathLike, split: str, *, kind: Optional[str] = None, n_perturbed: Optional[int] = None
) -> TofuSplit:
    """Load and validate one TOFU split from a local folder (nothing is fetched from a hub)."""
    src = Path(os.path.expanduser(str(source)))
    if src.is_dir():
        path = find_split_file(src, split)
        st = path.stat()
        # ctime and inode too: an in-place rewrite can keep size and mtime (os.utime), not ctime.
        version = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)
        return _load_cached(str(path), version, split, kind, n_perturbed)
    if src.is_file():
        raise ValueError(f"TOFU source {src} is a file; give the folder that holds {split}.json")
    raise FileNotFoundError(f"TOFU data folder {src} does not exist")


@lru_cache(maxsize=32)
def _load_cached(
    path: str, version: tuple[int, ...], split: str, kind: Optional[str], n_perturbed: Optional[int]
) -> TofuSplit:
    rows = _read_table(Path(path))
    return TofuSplit(split, path, validate_tofu_rows(rows, path, split, kind=kind, n_perturbed=n_perturbed))


def perturbed_split_name(split: str) -> str:
    """'forget10' → 'forget10_perturbed' (names already ending in _perturbed are kept)."""
    return split if split.endswith("_perturbed") else f"{split}_perturbed"


# ---------------------------------------------------------------- MUSE


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing file or bad JSON raises an error naming ``what`` / the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return read_json(path)


def _load_json(path: Path) -> Any:
    return read_json_file(path, "MUSE file")


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise FileNotFoundError(f"MUSE folder {folder} has none of {', '.join(names)}")


def _pairs(path: Path, a: str, b: str) -> tuple[tuple[str, str], ...]:
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of objects with {a!r} and {b!r}")
    if not rows:
        raise ValueError(f"{path}: is empty (no rows)")
    return tuple((_str_field(r, a, str(path), i), _str_field(r, b, str(path), i)) for i, r in enumerate(rows))


def _texts(path: Path) -> tuple[str, ...]:
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of strings")
    if not rows:
        raise ValueError(f"{path}: is empty (no texts)")
    for i, t in enumerate(rows):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{path}: row {i} must be a non-empty string, got {type(t).__name__}")
    return tuple(rows)


def load_muse(folder: PathLike) -> MuseData:
    """Load and validate a MUSE folder (knowmem / verbmem / privleak parts that exist)."""
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        raise FileNotFoundError(f"MUSE data folder {root} does not exist")
    parts: dict[str, Any] = {}
    km, vm, pl = root / "knowmem", root / "verbmem", root / "privleak"
    if km.is_dir():
        parts["knowmem_forget"] = _pairs(_first_existing(km, ("forget_qa.json",)), "question", "answer")
        parts["knowmem_forget_icl"] = _pairs(_first_existing(km, ("forget_qa_icl.json",)), "question", "answer")
        parts["knowmem_retain"] = _pairs(
            _first_existing(km, ("retain_qa.json", "retain2_qa.json")), "question", "answer"
        )
        parts["knowmem_retain_icl"] = _pairs(
            _first_existing(km, ("retain_qa_icl.json", "retain2_qa_icl.json")), "question", "answer"
        )
    if vm.is_dir():
        parts["verbmem_forget"] = _pairs(_first_existing(vm, ("forget.json",)), "prompt", "gt")
    if pl.is_dir():
        parts["privleak_forget"] = _texts(_first_existing(pl, ("forget.json",)))
        parts["privleak_retain"] = _texts(_first_existing(pl, ("retain.json", "retain2.json")))
        parts["privleak_holdout"] = _texts(_first_existing(pl, ("holdout.json",)))
    if not parts:
        raise FileNotFoundError(f"MUSE data folder {root} has none of knowmem/, verbmem/, privleak/")
    return MuseData(root=str(root), **parts)


def data_signature(path: Optional[PathLike]) -> Optional[str]:
    """A fingerprint of a data file or folder (file names and content) for result keys.

    Content, not sizes and mtimes: a file edited in place keeping both must not reuse
    stored results. Evaluation data is small (tens of MB), so hashing it is cheap.
    """
    if path is None:
        return None
    root = Path(path)
    if not root.exists():
        return None
    import hashlib

    h = hashlib.sha256(b"msa-data-v2;")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
        h.update(f"{p.relative_to(root) if p != root else p.name}:{digest.hexdigest()};".encode())
    return h.hexdigest()[:16]
