"""Atomic writes (msa_core.atomic): a file or folder appears complete or not at all."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from msa_core.atomic import (
    ASIDE_TAG,
    OWNER_FILE,
    TEMP_SUFFIX,
    atomic_file,
    clean_stale_temp,
    recover_replacement,
    replace_dir,
    temp_dir_beside,
    temp_prefix,
    write_bytes,
    write_json,
    write_text,
)


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


# ---------------------------------------------------------------- stale temp folders


def _make_temp(target: Path, tag: str, owner: object | None) -> Path:
    tmp = target.parent / f"{temp_prefix(target)}{tag}{TEMP_SUFFIX}"
    tmp.mkdir(parents=True)
    (tmp / "half.safetensors").write_bytes(b"xx")
    if owner is not None:
        (tmp / OWNER_FILE).write_text(json.dumps(owner))
    return tmp


def _dead_owner() -> dict:
    # An id above the kernel's pid_max (at most 2^22) never names a running process.
    return {"pid": 999_999_999, "start": None, "host": socket.gethostname()}


def test_temp_dir_beside_names_its_owner_process(tmp_path):
    with temp_dir_beside(tmp_path / "out") as tmp:
        owner = json.loads((tmp / OWNER_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert clean_stale_temp(tmp_path / "out") == [] and tmp.exists()  # a running build is kept


def test_clean_stale_temp_removes_only_dead_owners_folders(tmp_path):
    target = tmp_path / "model"
    stale = _make_temp(target, "stale1234", _dead_owner())
    alive = _make_temp(target, "alive1234", {"pid": os.getpid(), "start": None, "host": socket.gethostname()})
    no_owner = _make_temp(target, "foreign12", None)
    garbled = _make_temp(target, "garbled12", None)
    (garbled / OWNER_FILE).write_text("not json")
    other_host = _make_temp(target, "otherhost", {**_dead_owner(), "host": "another-machine"})
    aside = _make_temp(target, f"{ASIDE_TAG}abcd", _dead_owner())  # a previous copy: only recovery touches it
    unrelated = _make_temp(tmp_path / "other", "stale9999", _dead_owner())  # another target's temp folder
    plain = tmp_path / "notes.tmp"
    plain.mkdir()
    (plain / OWNER_FILE).write_text(json.dumps(_dead_owner()))  # not named like our temp folders
    assert clean_stale_temp(target) == [stale]
    assert not stale.exists()
    assert all(p.exists() for p in (alive, no_owner, garbled, other_host, aside, unrelated, plain))


def test_clean_stale_temp_treats_a_reused_process_id_as_dead(tmp_path):
    target = tmp_path / "model"
    reused = _make_temp(target, "reused123", {"pid": os.getpid(), "start": "1", "host": socket.gethostname()})
    assert clean_stale_temp(target) == [reused] and not reused.exists()


# ---------------------------------------------------------------- replacing a folder


def _complete(folder: Path) -> bool:
    return (folder / "done").is_file()


def _build(target: Path, text: str) -> Path:
    tmp = target.parent / f"{temp_prefix(target)}new{TEMP_SUFFIX}"
    tmp.mkdir()
    (tmp / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": None, "host": socket.gethostname()}))
    (tmp / "data").write_text(text)
    (tmp / "done").write_text("")
    return tmp


def test_replace_dir_puts_the_new_folder_in_place_and_keeps_nothing_else(tmp_path):
    target = tmp_path / "out"
    replace_dir(_build(target, "one"), target, may_replace=_complete, is_complete=_complete)
    assert (target / "data").read_text() == "one" and not (target / OWNER_FILE).exists()
    replace_dir(_build(target, "two"), target, may_replace=_complete, is_complete=_complete)
    assert (target / "data").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_refuses_a_folder_it_may_not_replace(tmp_path):
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "survey.csv").write_text("precious")
    new = _build(target, "x")
    with pytest.raises(FileExistsError, match=f"{target} exists and was not made by this tool"):
        replace_dir(new, target, may_replace=_complete, is_complete=_complete)
    assert (target / "survey.csv").read_text() == "precious" and new.exists()


class _Killed(BaseException):
    """A simulated kill -9: once raised, the 'process' does nothing more (see _kill_at)."""


def _kill_at(monkeypatch, step: int, *, after: bool) -> list[str]:
    """Count the file-system steps of a replacement (os.replace, unlink, rmtree); at ``step``
    (before or after doing it) the process 'dies': that step and every later one raise
    _Killed without acting, so no clean-up or rollback code runs, as under kill -9."""
    calls: list[str] = []
    dead = [False]
    real = {"replace": os.replace, "unlink": os.unlink, "rmtree": shutil.rmtree}

    def wrap(name):
        def step_fn(*args, **kwargs):
            if dead[0]:
                raise _Killed
            calls.append(name)
            index = len(calls)  # rmtree's own unlinks are counted as later steps
            if index == step and not after:
                dead[0] = True
                raise _Killed
            result = real[name](*args, **kwargs)
            if index == step and after:
                dead[0] = True
                raise _Killed
            return result
        return step_fn

    monkeypatch.setattr(os, "replace", wrap("replace"))
    monkeypatch.setattr(os, "unlink", wrap("unlink"))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree"))
    return calls


def test_a_kill_at_any_step_of_a_replacement_loses_neither_copy(tmp_path, monkeypatch):
    """At every kill point the old or the new complete folder is at the path, or the next run
    restores the old one (and says so); nothing else is left behind once recovery has run."""
    import msa_core.atomic as atomic

    target = tmp_path / "out"
    # how many steps a clean replacement takes
    replace_dir(_build(target, "old"), target, may_replace=_complete, is_complete=_complete)
    with monkeypatch.context() as m:
        calls = _kill_at(m, 10_000, after=False)
        replace_dir(_build(target, "probe"), target, may_replace=_complete, is_complete=_complete)
    n_steps = len(calls)
    assert n_steps >= 3  # old aside, new in place, clean-up
    seen_restores = 0
    for step in range(1, n_steps + 1):
        for after in (False, True):
            shutil.rmtree(target)
            replace_dir(_build(target, "old"), target, may_replace=_complete, is_complete=_complete)
            new = _build(target, "new")
            with monkeypatch.context() as m:
                _kill_at(m, step, after=after)
                with pytest.raises(_Killed):
                    atomic.replace_dir(new, target, may_replace=_complete, is_complete=_complete)
            # the next run: recovery first, then the dead process's temp folder goes
            notes = recover_replacement(target, _complete)
            seen_restores += any("restored the previous copy" in n for n in notes)
            assert _complete(target), (step, after, notes)
            assert (target / "data").read_text() in ("old", "new"), (step, after)
            assert not (target / OWNER_FILE).exists()
            if new.exists():
                (new / OWNER_FILE).write_text(json.dumps(_dead_owner()))  # its process is gone
            clean_stale_temp(target)
            assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], (step, after)
    assert seen_restores >= 1  # the kill between the two renames was hit and repaired


def test_recover_replacement_finishes_a_replacement_killed_after_the_new_copy_was_in_place(tmp_path, caplog):
    target = tmp_path / "out"
    replace_dir(_build(target, "new"), target, may_replace=_complete, is_complete=_complete)
    aside = tmp_path / f"{temp_prefix(target)}{ASIDE_TAG}dead{TEMP_SUFFIX}"
    aside.mkdir()
    (aside / "data").write_text("old")
    with caplog.at_level("WARNING"):
        notes = recover_replacement(target, _complete)
    assert notes == [f"{target}: finished an interrupted replacement (removed the previous copy {aside.name})"]
    assert not aside.exists() and (target / "data").read_text() == "new"
    assert notes[0] in caplog.text


def test_recover_replacement_restores_the_previous_copy_when_the_path_is_empty(tmp_path):
    target = tmp_path / "out"
    aside = tmp_path / f"{temp_prefix(target)}{ASIDE_TAG}dead{TEMP_SUFFIX}"
    aside.mkdir()
    (aside / "data").write_text("old")
    notes = recover_replacement(target, _complete)
    assert notes == [f"{target}: restored the previous copy from an interrupted replacement ({aside.name})"]
    assert (target / "data").read_text() == "old" and not aside.exists()
    assert recover_replacement(target, _complete) == []  # nothing more to do


def test_concurrent_replacements_of_one_folder_each_leave_a_complete_copy(tmp_path):
    target = tmp_path / "out"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(10):
                with temp_dir_beside(target) as tmp:
                    (tmp / "data").write_text(f"{i}-{j}")
                    (tmp / "done").write_text("")
                    replace_dir(tmp, target, may_replace=_complete, is_complete=_complete)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and _complete(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
