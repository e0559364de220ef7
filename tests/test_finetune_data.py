"""Training data (msa_core.finetune.data): specs, the reference retain sample, local TOFU/MUSE loading."""

from __future__ import annotations

import json

import pytest

from msa_core.finetune import data as fd


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture
def tofu_dir(tmp_path):
    d = tmp_path / "tofu"
    _write(d / "forget01.json", [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(4)])
    _write(d / "retain90.json", [{"question": f"r{i}?", "answer": f"ra{i}."} for i in range(360)])
    _write(d / "retain99.json", [{"question": f"s{i}?", "answer": f"sa{i}."} for i in range(396)])
    _write(d / "forget05.json", [])
    return d


@pytest.mark.parametrize("n_retain,fraction", [(3960, 0.01), (3800, 0.05), (3600, 0.1), (360, 0.1), (7, 0.5)])
def test_retain_sample_equals_the_reference_datasets_shuffle_seed_42(n_retain, fraction):
    # The reference (MSA scripts, src/data/datasets.py): ds.shuffle(seed=42).select(range(int(len(ds) * frac))).
    import datasets

    ds = datasets.Dataset.from_dict({"i": list(range(n_retain))})
    keep = int(len(ds) * fraction)
    expected = ds.shuffle(seed=42).select(range(keep))["i"]
    assert fd.retain_ft_size(n_retain, fraction) == keep
    assert fd.retain_ft_indices(n_retain, keep) == list(expected)
    assert len(set(expected)) == keep


def test_retain_sample_sizes_follow_the_reference_fractions():
    # TOFU: retain99/95/90 hold 3960/3800/3600 rows; floor(rows × (100 − XX)%) as the reference.
    assert [fd.retain_ft_size(n, fd.parse_data_spec(f"tofu:retain{x}_ft").fraction)
            for n, x in ((3960, 99), (3800, 95), (3600, 90))] == [39, 190, 360]
    with pytest.raises(ValueError, match="n_sample"):
        fd.retain_ft_indices(5, 6)


def test_specs_parse_and_bad_ones_are_named():
    assert fd.parse_data_spec("tofu:forget10") == fd.DataSpec("tofu", "forget10")
    spec = fd.parse_data_spec("tofu:retain95_ft")
    assert (spec.retain_of, spec.fraction, spec.text) == ("retain95", 0.05, "tofu:retain95_ft")
    assert fd.parse_data_spec("muse:news/raw/forget").name == "news/raw/forget"
    for bad in ("forget10", "hf:locuslab/TOFU", "tofu:", "tofu:../full", "muse:news/../../x", "tofu:retain00_ft"):
        with pytest.raises(ValueError, match="data spec"):
            fd.parse_data_spec(bad)


def test_tofu_splits_load_and_the_retain_sample_is_the_seeded_rows(tofu_dir):
    forget = fd.load_training_data("tofu:forget01", tofu_dir)
    assert forget.kind == "qa" and forget.pairs == tuple((f"q{i}?", f"a{i}.") for i in range(4))
    sample = fd.load_training_data("tofu:retain90_ft", tofu_dir)
    idx = fd.retain_ft_indices(360, 36)
    assert sample.pairs == tuple((f"r{i}?", f"ra{i}.") for i in idx)
    assert len(fd.load_training_data("tofu:retain99_ft", tofu_dir)) == 3


def test_unknown_split_names_the_folder_and_the_splits_it_holds(tofu_dir):
    with pytest.raises(FileNotFoundError) as err:
        fd.load_training_data("tofu:forget11", tofu_dir)
    msg = str(err.value)
    assert "forget11" in msg and str(tofu_dir) in msg and "forget01" in msg and "retain90" in msg
    with pytest.raises(FileNotFoundError, match="retain95"):
        fd.load_training_data("tofu:retain95_ft", tofu_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fd.load_training_data("tofu:forget01", tofu_dir / "nope")


def test_empty_data_is_an_error_naming_the_input(tofu_dir, tmp_path):
    with pytest.raises(ValueError, match="forget05.*empty"):
        fd.load_training_data("tofu:forget05", tofu_dir)
    _write(tmp_path / "muse" / "news" / "raw" / "forget.json", ["", "  "])
    with pytest.raises(ValueError, match="forget.json is empty"):
        fd.load_training_data("muse:news/raw/forget", tmp_path / "muse")
    with pytest.raises(ValueError, match="'mine' is empty"):
        fd.qa_data("mine", [])
    with pytest.raises(ValueError, match="'mine' is empty"):
        fd.text_data("mine", [])


def test_muse_texts_load_from_json_and_jsonl(tmp_path):
    _write(tmp_path / "news" / "raw" / "forget.json", ["First article.", "", "Second article."])
    got = fd.load_training_data("muse:news/raw/forget", tmp_path)
    assert got.kind == "text" and got.texts == ("First article.", "Second article.")
    (tmp_path / "news" / "raw" / "extra.jsonl").write_text('{"text": "A."}\n"B."\n', encoding="utf-8")
    assert fd.load_training_data("muse:news/raw/extra", tmp_path).texts == ("A.", "B.")
    with pytest.raises(FileNotFoundError, match="forget, extra|extra, forget"):
        fd.load_training_data("muse:news/raw/holdout", tmp_path)


def test_signatures_follow_content():
    a = fd.qa_data("x", [("q?", "a.")])
    assert a.signature == fd.qa_data("x", [("q?", "a.")]).signature
    assert a.signature != fd.qa_data("x", [("q?", "b.")]).signature
    assert a.signature != fd.text_data("x", ["q? a."]).signature


def test_real_tofu_forget_and_retain_samples_have_the_reference_sizes(shared_data):
    tofu = shared_data / "tofu"
    if not tofu.is_dir():
        pytest.skip("../shared/data/tofu is absent")
    full_rows = {s: len(json.loads((tofu / f"{s}.json").read_text())) for s in ("retain99", "retain90")}
    forget01 = fd.load_training_data("tofu:forget01", tofu)
    assert len(forget01) == len(json.loads((tofu / "forget01.json").read_text())) == 40
    r99 = fd.load_training_data("tofu:retain99_ft", tofu)
    assert len(r99) == int(full_rows["retain99"] * 0.01) == 39
    assert len(fd.load_training_data("tofu:retain90_ft", tofu)) == int(full_rows["retain90"] * 0.1) == 360
    rows = json.loads((tofu / "retain99.json").read_text())
    assert r99.pairs[0] == (rows[fd.retain_ft_indices(len(rows), 39)[0]]["question"],
                            rows[fd.retain_ft_indices(len(rows), 39)[0]]["answer"])
    assert not set(r99.pairs) & set(forget01.pairs)
