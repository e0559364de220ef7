"""Atomic writes (msa_core.atomic): a file or folder appears complete or not at all."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from msa_core.atomic import TEMP_SUFFIX, atomic_file, temp_dir_beside, temp_prefix, write_bytes, write_json, write_text


def _temps(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{temp_prefix(path)}*{TEMP_SUFFIX}"))


def test_writes_round_trip_and_create_the_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "report.json"
    assert write_json(target, {"a": [1, 2], "p": Path("x")}) == target
    assert json.loads(target.read_text()) == {"a": [1, 2], "p": "x"}
    assert write_text(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert _temps(target) == [] and _temps(tmp_path / "t.txt") == []


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "results.json"
    write_text(target, "old contents\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(target) as fh:
            fh.write("new contents, half writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old contents\n"
    assert _temps(target) == []


def test_an_os_error_mid_write_is_reraised_naming_the_file(tmp_path):
    target = tmp_path / "cache.bin"
    write_bytes(target, b"old")
    with pytest.raises(OSError, match="cache.bin"):
        with atomic_file(target, "wb") as fh:
            fh.write(b"partial")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old" and _temps(target) == []


def test_a_payload_that_cannot_be_serialised_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json(target, circular)
    assert not target.exists() and _temps(target) == []


def test_only_text_and_binary_write_modes():
    with pytest.raises(ValueError, match="mode"):
        with atomic_file("x", "a"):
            pass


def test_concurrent_writers_each_leave_a_complete_file(tmp_path):
    target = tmp_path / "shared.txt"
    # Distinct, large contents: a torn or interleaved write would show as a mixed file.
    contents = [str(i) * 200_000 for i in range(8)]
    write_text(target, contents[0])
    seen: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(15):
                write_text(target, text)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            seen.append(target.read_text())

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    watcher.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert target.read_text() in contents
    assert seen and all(s in contents for s in seen)  # a reader never sees a partial file
    assert _temps(target) == []


def test_temp_dir_beside_is_removed_on_error_and_on_exit(tmp_path):
    target = tmp_path / "vectors" / "abc"
    with pytest.raises(RuntimeError):
        with temp_dir_beside(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(temp_prefix(target))
            (tmp / "half.safetensors").write_bytes(b"xx")
            raise RuntimeError("build failed")
    assert not tmp.exists() and not target.exists()
    with temp_dir_beside(target) as tmp:
        (tmp / "f").write_text("unused")
    assert not tmp.exists()


def test_temp_dir_beside_renamed_into_place_survives(tmp_path):
    target = tmp_path / "out"
    with temp_dir_beside(target) as tmp:
        (tmp / "meta.json").write_text("{}")
        os.replace(tmp, target)
    assert (target / "meta.json").read_text() == "{}"
    assert _temps(target) == []


def test_files_and_folders_get_the_modes_of_a_plain_open_and_mkdir(tmp_path):
    # mkstemp/mkdtemp alone would make them private (0600/0700): a shared export or demo
    # folder must be readable the way any other file the user writes is.
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    written = write_text(tmp_path / "atomic.txt", "x")
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    with temp_dir_beside(tmp_path / "folder") as tmp:
        assert tmp.stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777
