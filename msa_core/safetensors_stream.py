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
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Optional

import torch

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


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header, offset of the data section) of a safetensors file, checked against its size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"{path}: truncated safetensors file (header claims {n} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise ValueError(f"{path}: corrupt safetensors header (bad data_offsets)") from None
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes, needs {8 + n + end})")
    return header, 8 + n


class SafetensorsFile:
    """One safetensors file read tensor by tensor with positional reads (no memory map).

    ``get(name)`` returns a new CPU tensor owning its memory; the file stays open until
    ``close()`` (or the end of a ``with`` block).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        header, self._data_start = read_header(self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, dict[str, Any]] = header
        self._fd: Optional[int] = os.open(self.path, os.O_RDONLY)

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
        dtype = _TORCH_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise ValueError(
                f"{self.path}: tensor {name!r} has dtype {meta.get('dtype')!r}, which this reader does not handle"
            )
        shape = [int(s) for s in meta["shape"]]
        a, b = (int(x) for x in meta["data_offsets"])
        out = torch.empty(shape, dtype=dtype)
        if out.numel() * out.element_size() != b - a:
            raise ValueError(f"{self.path}: tensor {name!r} spans {b - a} bytes but {meta['dtype']} {shape} needs "
                             f"{out.numel() * out.element_size()}")
        if b == a:
            return out
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        pos = 0
        while pos < b - a:
            got = os.preadv(self._fd, [view[pos : pos + _READ_CHUNK]], self._data_start + a + pos)
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
