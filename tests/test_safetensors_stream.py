"""Streaming safetensors I/O against the reference safetensors library: the positional
reader returns exactly what ``safetensors.torch.load_file`` does, and the streaming writer
produces files the library reads back unchanged."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from msa_core.safetensors_stream import SafetensorsFile, StreamingSafetensorsWriter, read_header


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


# ---------------------------------------------------------------- untrusted headers (issue 16, cases 7, 13, 14)


def _craft(path, header, data: bytes = b"") -> None:
    """A safetensors file with a hand-written header (a dict, or raw bytes) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _f32(begin: int, end: int, shape=(4,)) -> dict:
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "nbytes", "message"),
    [
        # b reads a's bytes: the silently wrong τ_f of the issue
        ({"a": _f32(0, 16), "b": _f32(0, 16)}, 32, r"tensor 'b': data_offsets \[0, 16\] overlaps tensor 'a'"),
        ({"a": _f32(0, 16), "b": _f32(8, 24)}, 24, r"tensor 'b': data_offsets \[8, 24\] overlaps tensor 'a'"),
        ({"a": _f32(0, 16), "b": _f32(20, 36)}, 36, r"tensor 'b'.* leaves a gap of 4 bytes after tensor 'a'"),
        ({"a": _f32(4, 20)}, 20, r"tensor 'a'.* leaves a gap of 4 bytes after the start of the data"),
        ({"a": _f32(0, 8)}, 8, r"tensor 'a': data_offsets \[0, 8\] span 8 bytes but F32 \[4\] needs 16"),
        ({"a": _f32(0, 16)}, 20, r"4 bytes after the last tensor"),
        ({"a": _f32(0, 16)}, 12, r"truncated safetensors file"),
        ({"a": _f32(16, 8)}, 16, r"tensor 'a': data_offsets \[16, 8\] end before they begin"),
    ],
)
def test_offsets_that_overlap_leave_gaps_or_miss_the_end_are_refused_like_the_library(
    tmp_path, header, nbytes, message
):
    path = tmp_path / "x.safetensors"
    _craft(path, header, bytes(nbytes))
    with pytest.raises(ValueError, match="x.safetensors: .*" + message):
        SafetensorsFile(path)
    with pytest.raises(SafetensorError):  # the reference library refuses the same file
        load_file(str(path))


@pytest.mark.parametrize(
    ("shape", "offsets", "message"),
    [
        ([2**40, 2**40], [0, 16], r"shape \[1099511627776, 1099511627776\] needs more bytes than the file holds"),
        ([2**40, 2**40], [0, 2**82], r"shape \[1099511627776, 1099511627776\] needs more bytes than the file holds"),
        ([-1, 4], [0, 16], r"'shape' must be a list of non-negative integers, got \[-1, 4\]"),
        ([2.5], [0, 16], r"'shape' must be a list of non-negative integers, got \[2.5\]"),
        ([True], [0, 16], r"'shape' must be a list of non-negative integers, got \[True\]"),
        ("4", [0, 16], r"'shape' must be a list of non-negative integers, got '4'"),
        ([4], [0, -16], r"'data_offsets' must be \[begin, end\] non-negative integers"),
        ([4], [0], r"'data_offsets' must be \[begin, end\] non-negative integers"),
    ],
)
def test_crafted_shapes_are_refused_before_any_allocation(tmp_path, monkeypatch, shape, offsets, message):
    path = tmp_path / "x.safetensors"
    _craft(path, {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}, bytes(16))

    def no_alloc(*args, **kwargs):
        raise AssertionError("torch.empty called before the header was validated")

    monkeypatch.setattr(torch, "empty", no_alloc)
    with pytest.raises(ValueError, match=r"x.safetensors: tensor 'w': " + message):
        SafetensorsFile(path)
    with pytest.raises(ValueError, match=r"x.safetensors: tensor 'w': " + message):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[1, 2]", r"corrupt safetensors header \(expected a JSON object, got a list\)"),
        (b'"text"', r"corrupt safetensors header \(expected a JSON object, got a string\)"),
        (b'{"a": {"dtype": "F32", "sh', r"corrupt safetensors header \(not valid JSON"),
        (b'{"a": "\xff"}', r"not valid UTF-8 \(byte 0xff at offset 7\)"),
        ({"a": [1, 2]}, r"tensor 'a': header entry must be an object, got a list"),
        ({"a": {"shape": [4], "data_offsets": [0, 16]}}, r"tensor 'a': header entry has no 'dtype'"),
        ({"a": {"dtype": "F32", "data_offsets": [0, 16]}}, r"tensor 'a': header entry has no 'shape'"),
        ({"a": {"dtype": "F32", "shape": [4]}}, r"tensor 'a': header entry has no 'data_offsets'"),
        ({"a": {"dtype": 32, "shape": [4], "data_offsets": [0, 16]}}, r"tensor 'a': 'dtype' must be a string"),
        ({"a": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, r"tensor 'a': unknown dtype 'F33'"),
        ({"__metadata__": ["x"], "a": _f32(0, 16)}, r"'__metadata__' must map strings to strings"),
        ({"__metadata__": {"k": 1}, "a": _f32(0, 16)}, r"'__metadata__' must map strings to strings"),
        (b'{"a": ' + json.dumps(_f32(0, 16)).encode() + b', "a": ' + json.dumps(_f32(0, 16)).encode() + b"}",
         r"key 'a' appears twice"),
    ],
)
def test_header_of_the_wrong_structure_names_file_and_key(tmp_path, header, message):
    path = tmp_path / "x.safetensors"
    _craft(path, header, bytes(16))
    with pytest.raises(ValueError, match=r"x.safetensors: .*" + message):
        SafetensorsFile(path)


def test_header_length_over_the_library_limit_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(ValueError, match=r"x.safetensors: corrupt safetensors header \(claims 200000000 bytes, the"):
        SafetensorsFile(path)


def test_valid_headers_the_library_accepts_are_accepted(tmp_path):
    """Null metadata, zero-size tensors sharing an offset, dtypes this reader only indexes."""
    path = tmp_path / "x.safetensors"
    header = {
        "__metadata__": None,
        "a": _f32(0, 16),
        "z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [16, 16]},
        "u": {"dtype": "U16", "shape": [2], "data_offsets": [16, 20]},
    }
    _craft(path, header, bytes(20))
    assert set(load_file(str(path))) == {"a", "z", "u"}
    with SafetensorsFile(path) as fh:
        assert fh.metadata == {}
        assert torch.equal(fh.get_tensor("a"), torch.zeros(4))
        assert fh.get_tensor("z").shape == (0, 3)
        with pytest.raises(ValueError, match="tensor 'u' has dtype 'U16', which this reader does not handle"):
            fh.get_tensor("u")
    assert read_header(path).entries["u"].shape == (2,)
