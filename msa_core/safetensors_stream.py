"""Streaming safetensors I/O: a writer that emits tensors one at a time, and a reader
that fetches one tensor at a time with positional reads.

``safetensors.torch.save_file`` needs every tensor in memory at once; for forget and
retain vectors of a large model that is two fp32 models' worth. The format is simple
(8-byte little-endian header length, JSON header, raw bytes), so when all shapes are
known up front we write the header first and stream each tensor's bytes after it,
keeping peak memory at one tensor. Files are written to a temp name and renamed by
the caller.

Reading uses ``os.preadv`` into a fresh tensor rather than a memory map (what
``safetensors.safe_open`` does): the pages of a memory-mapped file stay resident and count
in the process's RSS until the map is closed, so streaming three checkpoints through maps
shows up as ~3 checkpoints of RSS even though only a few tensors are live. Positional reads
leave nothing behind once a tensor is dropped (BENCHMARKS.md, figure 4). The format is
simple enough (see above) that this needs no library support.

Headers are untrusted input: :func:`read_header` checks them as strictly as the library
does (structure and types, known dtypes, sizes equal to shape × dtype size, offsets sorted,
contiguous, non-overlapping and ending exactly at the end of the file) before any tensor
is allocated, and every refusal names the file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

import torch

from msa_core.untrusted import decode_utf8, json_type

_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name in ("float8_e4m3fn", "float8_e5m2"):  # F8 names as the safetensors format spells them
    if hasattr(torch, _name):
        _TORCH_DTYPES["F8_E4M3" if "e4m3" in _name else "F8_E5M2"] = getattr(torch, _name)
# What the writer emits: the float dtypes, by their safetensors names.
_DTYPE_NAMES = {_TORCH_DTYPES[n]: n for n in ("F64", "F32", "F16", "BF16")}
# One preadv call is capped by the kernel (~2 GiB on Linux); bigger tensors take several.
_READ_CHUNK = 1 << 30


# Bits per element of every dtype the safetensors format defines, so that a header is
# validated as strictly as the library does even for dtypes this reader cannot load (F4, U16, ...).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# The library refuses headers longer than 100 MB (its MAX_HEADER_SIZE) before reading them; so
# do we, so a crafted length cannot make us read a whole file into one string.
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header, validated: offsets are relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: tensors in file order, metadata, where the data starts."""

    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def _shown(name: str) -> str:
    # Tensor names come from the file; a crafted one could be megabytes long.
    return repr(name if len(name) <= 200 else name[:200] + "...")


def _no_duplicate_keys(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                # json.loads would silently keep the last one; a duplicated tensor is ambiguous.
                raise ValueError(f"{path}: corrupt safetensors header (key {_shown(k)} appears twice)")
            out[k] = v
        return out

    return hook


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: Path, name: str, raw: Any, data_len: int) -> TensorEntry:
    """Check one header entry's structure and that its byte span matches shape × dtype size."""
    where = f"{path}: tensor {_shown(name)}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: header entry must be an object, got {json_type(raw)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in raw:
            raise ValueError(f"{where}: header entry has no {key!r}")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str):
        raise ValueError(f"{where}: 'dtype' must be a string, got {json_type(dtype)}")
    if dtype not in _DTYPE_BITS:
        raise ValueError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r:.200}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise ValueError(f"{where}: 'data_offsets' must be [begin, end] non-negative integers, got {offsets!r:.200}")
    begin, end = offsets
    if end < begin:
        raise ValueError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    # Multiply with a cap so a crafted shape ([2**40, 2**40], or a million dims) is refused
    # after a few steps rather than building an enormous integer; no tensor can hold more
    # elements than the file has bits.
    numel = 0 if 0 in shape else 1
    for d in shape if numel else ():
        numel *= d
        if numel > 8 * data_len:
            raise ValueError(f"{where}: shape {shape!r:.200} needs more bytes than the file holds ({data_len})")
    bits = numel * _DTYPE_BITS[dtype]
    if bits % 8:
        raise ValueError(f"{where}: {dtype} {shape} does not fill a whole number of bytes")
    if end - begin != bits // 8:
        raise ValueError(
            f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but {dtype} {shape} needs {bits // 8}"
        )
    return TensorEntry(dtype, tuple(shape), begin, end)


def _read_header_fd(fd: int, path: Path) -> SafetensorsHeader:
    size = os.fstat(fd).st_size
    raw = os.pread(fd, 8, 0)
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER_BYTES:
        raise ValueError(f"{path}: corrupt safetensors header (claims {n} bytes, the limit is {_MAX_HEADER_BYTES})")
    if n > size - 8:
        raise ValueError(f"{path}: truncated safetensors file (header claims {n} bytes)")
    text = decode_utf8(os.pread(fd, n, 8), path)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt safetensors header (not valid JSON: {exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (expected a JSON object, got {json_type(header)})")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: '__metadata__' must map strings to strings, got {metadata!r:.200}")
    data_len = size - 8 - n
    entries = {name: _entry(path, name, raw_entry, data_len) for name, raw_entry in header.items()}
    # As the library does: sorted by offset, the tensors must tile the data section exactly,
    # from byte 0 to the end of the file; an overlap would read one tensor's bytes as another's.
    pos, prev = 0, None
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            after = f"tensor {_shown(prev)}, which ends at byte {pos}" if prev is not None else "the start of the data"
            how = "overlaps" if e.begin < pos else f"leaves a gap of {e.begin - pos} bytes after"
            raise ValueError(
                f"{path}: tensor {_shown(name)}: data_offsets [{e.begin}, {e.end}] {how} {after} "
                "(tensors must be contiguous and non-overlapping)"
            )
        pos, prev = e.end, name
    if pos > data_len:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes, needs {8 + n + pos})")
    if pos < data_len:
        raise ValueError(f"{path}: corrupt safetensors file ({data_len - pos} bytes after the last tensor)")
    return SafetensorsHeader(entries, metadata, 8 + n)


def read_header(path: Path) -> SafetensorsHeader:
    """The validated header of a safetensors file (checked as strictly as the safetensors library does).

    Raises ValueError naming the file (and the tensor) for a truncated file, a malformed
    header, bad dtypes/shapes, or offsets that overlap, leave gaps or miss the file's end.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_header_fd(fd, path)
    finally:
        os.close(fd)


class SafetensorsFile:
    """One safetensors file read tensor by tensor with positional reads (no memory map).

    ``get(name)`` returns a new CPU tensor owning its memory; the file stays open until
    ``close()`` (or the end of a ``with`` block). The header is validated on opening, so
    no tensor is allocated before its size is known to fit in the file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: Optional[int] = None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            header = _read_header_fd(fd, self.path)
        except (ValueError, OSError):
            os.close(fd)  # refused: do not leak the descriptor
            raise
        self._fd = fd
        self._data_start = header.data_start
        self.metadata: dict[str, str] = header.metadata
        self._entries: dict[str, TensorEntry] = header.entries

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def get_tensor(self, name: str) -> torch.Tensor:
        meta = self._entries.get(name)
        if meta is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        if self._fd is None:
            raise ValueError(f"{self.path}: file is closed")
        dtype = _TORCH_DTYPES.get(meta.dtype)
        if dtype is None:
            raise ValueError(
                f"{self.path}: tensor {name!r} has dtype {meta.dtype!r}, which this reader does not handle"
            )
        out = torch.empty(meta.shape, dtype=dtype)  # size checked against the file by the header validation
        size = meta.end - meta.begin
        if size == 0:
            return out
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        pos = 0
        while pos < size:
            got = os.preadv(self._fd, [view[pos : pos + _READ_CHUNK]], self._data_start + meta.begin + pos)
            if got <= 0:
                raise ValueError(f"{self.path}: tensor {name!r}: file ended early (truncated while reading?)")
            pos += got
        return out


class StreamingSafetensorsWriter:
    """Write a safetensors file whose tensor names, shapes and dtypes are declared first.

    It writes straight to ``path``; callers build inside a temp folder
    (:func:`msa_core.atomic.temp_dir_beside`) and rename the finished folder into place.
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: Optional[dict[str, str]] = None,
    ):
        self.path = Path(path)
        self._specs = specs
        self._next = 0
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name, shape, dtype in specs:
            if dtype not in _DTYPE_NAMES:
                raise ValueError(f"{path}: tensor {name}: dtype {dtype} not supported by the streaming writer")
            n = 1
            for s in shape:
                n *= int(s)
            nbytes = n * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]
            }
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((8 - len(raw) % 8) % 8)  # keep data 8-byte aligned, as the reference writer does
        self._fh: BinaryIO = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next declared tensor (must come in declaration order)."""
        if self._next >= len(self._specs):
            raise ValueError(f"{self.path}: more tensors written than declared (at {name})")
        exp_name, exp_shape, exp_dtype = self._specs[self._next]
        if name != exp_name or tuple(tensor.shape) != tuple(exp_shape) or tensor.dtype != exp_dtype:
            raise ValueError(
                f"{self.path}: expected tensor {exp_name} {list(exp_shape)} {exp_dtype}, "
                f"got {name} {list(tensor.shape)} {tensor.dtype}"
            )
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        self._fh.write(memoryview(t.view(torch.uint8).numpy()))  # no intermediate bytes copy
        self._next += 1

    def close(self) -> None:
        """Flush and close; raise if fewer tensors were written than declared."""
        try:
            self._fh.flush()
            self._fh.close()
        finally:
            if self._next != len(self._specs):
                raise ValueError(f"{self.path}: only {self._next} of {len(self._specs)} declared tensors were written")

    def abort(self) -> None:
        """Close without the completeness check (the caller deletes the temp file)."""
        self._fh.close()
