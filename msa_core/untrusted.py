"""Reading files the user hands us (configs, tokenizer files, experiment YAML, data files):
every failure names the file, and the byte or key at fault.

Python's own messages ("'utf-8' codec can't decode byte 0xff in position 12") and the
``AttributeError`` of indexing a JSON list as an object say neither which file nor which
key, so every reader of an untrusted text or JSON file goes through these helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]


def decode_utf8(raw: bytes, path: PathLike) -> str:
    """``raw`` decoded as UTF-8; invalid bytes raise ValueError naming the file, byte and offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        byte = f"byte 0x{bad.hex()}" if bad else "truncated sequence"
        raise ValueError(f"{path}: not valid UTF-8 ({byte} at offset {exc.start})") from None


def read_text(path: PathLike) -> str:
    """A UTF-8 text file's content; see :func:`decode_utf8` for the error on bad bytes."""
    p = Path(path)
    return decode_utf8(p.read_bytes(), p)


def read_json(path: PathLike) -> Any:
    """A JSON file's content; bad UTF-8 or bad JSON raise ValueError naming the file and line."""
    p = Path(path)
    try:
        return json.loads(read_text(p))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def read_json_object(path: PathLike) -> dict[str, Any]:
    """:func:`read_json` for a file that must hold a JSON object (config.json, tokenizer.json, ...)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {json_type(data)}")
    return data


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message: 'a list', 'an object', 'null', ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")
