"""Streaming safetensors I/O against the reference safetensors library: the positional
reader returns exactly what ``safetensors.torch.load_file`` does, and the streaming writer
produces files the library reads back unchanged."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_core.safetensors_stream import SafetensorsFile, StreamingSafetensorsWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w32": torch.randn(7, 5, generator=g),
        "w16": torch.randn(3, 11, generator=g).to(torch.bfloat16),
        "h16": torch.randn(13, generator=g).to(torch.float16),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(9, dtype=torch.int64).reshape(3, 3),
        "mask": torch.tensor([True, False, True]),
    }


def test_positional_reader_matches_library(tmp_path):
    want = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(want, str(path), metadata={"format": "pt"})
    ref = load_file(str(path))
    with SafetensorsFile(path) as fh:
        assert sorted(fh.keys()) == sorted(want)
        assert fh.metadata == {"format": "pt"}
        for name in want:
            got = fh.get_tensor(name)
            assert got.dtype == ref[name].dtype and got.shape == ref[name].shape, name
            assert torch.equal(got, ref[name]), name
        with pytest.raises(KeyError, match="nope"):
            fh.get_tensor("nope")


def test_read_tensor_owns_its_memory(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    with SafetensorsFile(path) as fh:
        a = fh.get_tensor("a")
    save_file({"a": torch.zeros(4)}, str(path))  # rewriting the file must not change a live tensor
    assert torch.equal(a, torch.ones(4))


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1000)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="m.safetensors.*truncated"):
        SafetensorsFile(path)
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated"):
        SafetensorsFile(path)


def test_streaming_writer_round_trips_through_library(tmp_path):
    want = {k: v for k, v in _tensors().items() if v.dtype.is_floating_point}
    path = tmp_path / "s.safetensors"
    w = StreamingSafetensorsWriter(path, [(k, tuple(v.shape), v.dtype) for k, v in want.items()], {"kind": "x"})
    for k, v in want.items():
        w.write(k, v)
    w.close()
    got = load_file(str(path))
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_streaming_writer_rejects_out_of_order(tmp_path):
    w = StreamingSafetensorsWriter(tmp_path / "s.safetensors", [("a", (2,), torch.float32), ("b", (2,), torch.float32)])
    with pytest.raises(ValueError, match="expected tensor a"):
        w.write("b", torch.zeros(2))
    w.abort()
