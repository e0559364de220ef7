"""TOFU / MUSE loaders: every accepted format, and errors naming file, row and field."""

from __future__ import annotations

import json
import os
import time

import pytest
from eval_fixtures import tofu_rows, write_muse

from msa_core.eval.data import (
    data_signature,
    find_split_file,
    load_muse,
    load_tofu_split,
    perturbed_split_name,
    split_kind,
)


def _write(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_tofu_json_array_jsonlines_hf_lines_parquet_and_saved_dataset(tmp_path):
    rows = tofu_rows(4)
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "forget10_perturbed.json", rows)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "forget10_perturbed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "c").mkdir()  # HF Dataset.to_json output: several JSON arrays, one per line
    (tmp_path / "c" / "forget10_perturbed.json").write_text(json.dumps(rows[:2]) + "\n" + json.dumps(rows[2:]) + "\n")
    import pandas as pd

    (tmp_path / "d").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "d" / "forget10_perturbed.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "e" / "forget10_perturbed"))
    for sub in "abcde":
        split = load_tofu_split(tmp_path / sub, "forget10_perturbed")
        assert len(split) == 4, sub
        assert split.items[2].question == rows[2]["question"]
        assert split.items[3].perturbed_answers == tuple(rows[3]["perturbed_answer"])
        assert split.items[0].paraphrased_answer == rows[0]["paraphrased_answer"]
    assert len(split.head(2)) == 2 and split.head(None) is split


def test_split_kinds():
    assert split_kind("forget10_perturbed") == "perturbed"
    assert split_kind("retain_perturbed") == "perturbed"
    assert split_kind("real_authors_perturbed") == "options"
    assert split_kind("world_facts_perturbed") == "options"
    assert split_kind("holdout10") == "plain"
    assert perturbed_split_name("forget05") == "forget05_perturbed"
    assert perturbed_split_name("retain_perturbed") == "retain_perturbed"


def test_missing_field_names_file_row_and_field(tmp_path):
    rows = tofu_rows(3)
    del rows[1]["paraphrased_answer"]
    f = _write(tmp_path / "forget10_perturbed.json", rows)
    with pytest.raises(KeyError) as exc:
        load_tofu_split(tmp_path, "forget10_perturbed")
    msg = str(exc.value)
    assert str(f) in msg and "row 1" in msg and "paraphrased_answer" in msg


def test_wrong_perturbed_count_names_row(tmp_path):
    rows = tofu_rows(5, n_pert=3)
    rows[3]["perturbed_answer"] = rows[3]["perturbed_answer"][:2]
    f = _write(tmp_path / "retain_perturbed.json", rows)
    with pytest.raises(ValueError) as exc:
        load_tofu_split(tmp_path, "retain_perturbed")
    msg = str(exc.value)
    assert str(f) in msg and "row 3" in msg and "perturbed_answer" in msg and "has 2" in msg and "expected 3" in msg
    with pytest.raises(ValueError, match="row 0 .*expected 5"):
        load_tofu_split(tmp_path, "retain_perturbed", n_perturbed=5)


def test_empty_split_bad_types_and_missing_file(tmp_path):
    f = _write(tmp_path / "forget10_perturbed.json", [])
    with pytest.raises(ValueError, match="empty") as exc:
        load_tofu_split(tmp_path, "forget10_perturbed")
    assert str(f) in str(exc.value)
    rows = tofu_rows(2)
    rows[1]["perturbed_answer"] = "not a list"
    _write(tmp_path / "retain_perturbed.json", rows)
    with pytest.raises(ValueError, match="row 1 field 'perturbed_answer' must be a non-empty list"):
        load_tofu_split(tmp_path, "retain_perturbed")
    _write(tmp_path / "holdout10.json", [{"question": "q", "answer": 3}])
    with pytest.raises(ValueError, match="row 0 field 'answer' must be a string"):
        load_tofu_split(tmp_path, "holdout10")
    _write(tmp_path / "forget01.json", [{"question": "q", "answer": "  "}])
    with pytest.raises(ValueError, match="row 0 field 'answer' is empty"):
        load_tofu_split(tmp_path, "forget01")
    (tmp_path / "broken.json").write_text('[{"question": "q"')
    with pytest.raises(ValueError, match="broken.json"):
        load_tofu_split(tmp_path, "broken")
    with pytest.raises(FileNotFoundError, match="forget05"):
        load_tofu_split(tmp_path, "forget05")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tofu_split(tmp_path / "nope", "forget05")


def test_hub_name_is_not_fetched_but_refused_as_a_missing_folder():
    with pytest.raises(FileNotFoundError, match="locuslab/TOFU does not exist"):
        load_tofu_split("locuslab/TOFU", "forget10_perturbed")


def test_reload_sees_file_changes(tmp_path):
    _write(tmp_path / "holdout10.json", [{"question": "q", "answer": "a"}])
    assert len(load_tofu_split(tmp_path, "holdout10")) == 1
    _write(tmp_path / "holdout10.json", [{"question": "q", "answer": "a"}, {"question": "q2", "answer": "b!"}])
    assert len(load_tofu_split(tmp_path, "holdout10")) == 2


@pytest.mark.parametrize("retain_name", ["retain", "retain2"])
def test_muse_folder_with_both_retain_namings(tmp_path, retain_name):
    m = load_muse(write_muse(tmp_path / "muse", retain_name=retain_name))
    assert len(m.knowmem_forget) == 4 and len(m.knowmem_forget_icl) == 2
    assert len(m.knowmem_retain) == 4 and len(m.knowmem_retain_icl) == 2
    assert len(m.verbmem_forget) == 3 and m.verbmem_forget[0][0].startswith("Question:")
    assert len(m.privleak_forget) == 3 and len(m.privleak_retain) == 2 and len(m.privleak_holdout) == 3


def test_muse_errors_name_file_row_field(tmp_path):
    root = write_muse(tmp_path / "muse")
    (root / "verbmem" / "forget.json").write_text(json.dumps([{"prompt": "p", "gt": "g"}, {"prompt": "p"}]))
    with pytest.raises(KeyError, match=r"verbmem/forget.json: row 1 is missing field 'gt'"):
        load_muse(root)
    (root / "verbmem" / "forget.json").write_text(json.dumps([{"prompt": "p", "gt": "g"}]))
    (root / "privleak" / "holdout.json").write_text(json.dumps([]))
    with pytest.raises(ValueError, match=r"privleak/holdout.json: is empty"):
        load_muse(root)
    (root / "privleak" / "holdout.json").write_text(json.dumps(["ok", 5]))
    with pytest.raises(ValueError, match=r"holdout.json: row 1 must be a non-empty string"):
        load_muse(root)
    (root / "privleak" / "holdout.json").unlink()
    with pytest.raises(FileNotFoundError, match="holdout.json"):
        load_muse(root)
    (root / "privleak" / "holdout.json").write_text(json.dumps(["x"]))
    (root / "knowmem" / "retain_qa.json").unlink()
    with pytest.raises(FileNotFoundError, match="retain_qa.json, retain2_qa.json"):
        load_muse(root)
    with pytest.raises(FileNotFoundError, match="none of knowmem"):
        load_muse(tmp_path)


# ---------------------------------------------------------------- issue 16


@pytest.mark.parametrize("split", ["../outside", "../../x", "/etc/passwd", "sub/forget10", ".."])
def test_split_names_cannot_read_outside_the_data_folder(tmp_path, split):
    data = tmp_path / "data"
    data.mkdir()
    _write(tmp_path / "outside.json", [{"question": "secret", "answer": "a"}])  # must not be read
    with pytest.raises(ValueError, match=rf"TOFU split in {data}: .* is not a split name"):
        load_tofu_split(data, split)
    with pytest.raises(ValueError, match="is not a split name"):
        find_split_file(data, split)


def test_invalid_utf8_data_files_name_file_byte_and_offset(tmp_path):
    (tmp_path / "holdout10.json").write_bytes(b'[{"question": "q\xff", "answer": "a"}]')
    with pytest.raises(ValueError, match=r"holdout10.json: not valid UTF-8 \(byte 0xff at offset 16\)"):
        load_tofu_split(tmp_path, "holdout10")
    (tmp_path / "forget01.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\x80"}\n')
    with pytest.raises(ValueError, match=r"forget01.jsonl: not valid UTF-8 \(byte 0x80 at offset 47\)"):
        load_tofu_split(tmp_path, "forget01")
    root = write_muse(tmp_path / "muse")
    (root / "privleak" / "holdout.json").write_bytes(b'["ok", "\xc3\x28"]')
    with pytest.raises(ValueError, match=r"privleak/holdout.json: not valid UTF-8 \(byte 0xc3 at offset 8\)"):
        load_muse(root)


def _rewrite_same_size_and_mtime(path, old: bytes, new: bytes) -> None:
    st = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_in_place_edit_keeping_size_and_mtime_is_seen_by_loader_and_signature(tmp_path):
    path = _write(tmp_path / "holdout10.json", [{"question": "q", "answer": "aaa"}])
    assert load_tofu_split(tmp_path, "holdout10").items[0].answer == "aaa"
    before = data_signature(tmp_path)
    time.sleep(0.05)  # the edit's ctime must fall in a later clock tick
    _rewrite_same_size_and_mtime(path, b'"aaa"', b'"bbb"')
    assert load_tofu_split(tmp_path, "holdout10").items[0].answer == "bbb"
    assert data_signature(tmp_path) != before
