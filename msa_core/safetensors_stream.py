"""A streaming safetensors writer: tensors are written one at a time, in order.

``safetensors.torch.save_file`` needs every tensor in memory at once; for forget and
retain vectors of a large model that is two fp32 models' worth. The format is simple
(8-byte little-endian header length, JSON header, raw bytes), so when all shapes are
known up front we write the header first and stream each tensor's bytes after it,
keeping peak memory at one tensor. Files are written to a temp name and renamed by
the caller.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO, Optional

import torch

_DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
}


class StreamingSafetensorsWriter:
    """Write a safetensors file whose tensor names, shapes and dtypes are declared first."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: Optional[dict[str, str]] = None):
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
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
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
                f"{self.path}: expected tensor {exp_name} {list(exp_shape)} {exp_dtype}, got {name} {list(tensor.shape)} {tensor.dtype}"
            )
        t = tensor.detach().to("cpu").contiguous()
        self._fh.write(t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes())
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
