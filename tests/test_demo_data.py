"""The demo's generated data: deterministic, in TOFU's and MUSE's formats, splits disjoint."""

from __future__ import annotations

import json

import pytest

from msa_core.demo import data as dd

SMALL = dict(n_background=5, n_forget=2, n_retain=8, n_holdout=2, eval_retain_authors=3)


def _dump(payload) -> str:
    return json.dumps(payload, sort_keys=True)


def test_same_seed_same_files_other_seed_other_files():
    a, b, c = dd.build_data(3, **SMALL), dd.build_data(3, **SMALL), dd.build_data(4, **SMALL)
    assert _dump(dd.tofu_files(a)) == _dump(dd.tofu_files(b))
    assert _dump(dd.muse_files(a)) == _dump(dd.muse_files(b))
    assert dd.pretrain_texts(a) == dd.pretrain_texts(b) and dd.tokenizer_corpus(a) == dd.tokenizer_corpus(b)
    assert _dump(dd.tofu_files(a)["full.json"]) != _dump(dd.tofu_files(c)["full.json"])


def test_tofu_fields_and_counts():
    data = dd.build_data(0, **SMALL)
    files = dd.tofu_files(data)
    n_attr = len(dd.ATTRIBUTES)
    assert 10 <= n_attr <= 20
    assert len(files["forget10.json"]) == 2 * n_attr
    assert len(files["retain90.json"]) == 8 * n_attr
    assert len(files["holdout10.json"]) == 2 * n_attr
    assert files["full.json"] == files["forget10.json"] + files["retain90.json"]
    assert len(files["retain_perturbed.json"]) == 3 * n_attr
    for name in ("forget10_perturbed.json", "retain_perturbed.json"):
        for it in files[name]:
            assert set(it) == {"question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"}
            assert len(it["perturbed_answer"]) == 5 and len(set(it["perturbed_answer"])) == 5
            assert it["paraphrased_answer"] not in it["perturbed_answer"]
            assert it["paraphrased_question"] != it["question"]
    # the plain splits are the perturbed ones without the extra fields
    assert files["forget10.json"] == [{"question": it["question"], "answer": it["answer"]}
                                      for it in files["forget10_perturbed.json"]]
    retain_plain = {(it["question"], it["answer"]) for it in files["retain90.json"]}
    assert {(it["question"], it["answer"]) for it in files["retain_perturbed.json"]} <= retain_plain


def test_perturbed_answers_change_only_the_value():
    data = dd.build_data(0, **SMALL)
    author = data.world.forget[0]
    items = data.items["forget"][: len(dd.ATTRIBUTES)]
    for attr, it in zip(dd.ATTRIBUTES, items):
        assert author.name in it["question"] and author.name in it["paraphrased_answer"]
        value = author.facts[attr]
        assert value in it["paraphrased_answer"]
        prefix = it["paraphrased_answer"].split(value)[0]
        prefix = prefix[:-3] if prefix.endswith(" a ") else prefix[:-4] if prefix.endswith(" an ") else prefix
        for wrong in it["perturbed_answer"]:
            assert wrong.startswith(prefix) and value not in wrong.replace(prefix, "", 1)


def test_splits_disjoint_and_clean_corpus_free_of_evaluated_authors():
    data = dd.build_data(0, **SMALL)
    groups = {g: {a.name for a in getattr(data.world, g)} for g in ("background", "forget", "retain", "holdout")}
    names = [n for g in groups.values() for n in g]
    assert len(names) == len(set(names))
    surnames = [n.split()[-1] for n in names]
    assert len(surnames) == len(set(surnames))
    files = dd.tofu_files(data)
    q = {g: {it["question"] for it in files[f]} for g, f in
         (("forget", "forget10.json"), ("retain", "retain90.json"), ("holdout", "holdout10.json"))}
    assert not (q["forget"] & q["retain"]) and not (q["holdout"] & (q["forget"] | q["retain"]))
    # θ_clean's corpus never mentions a forget, retain or holdout author ...
    corpus = " ".join(dd.pretrain_texts(data)) + " ".join(q + " " + a for q, a in dd.pretrain_qa(data))
    for g in ("forget", "retain", "holdout"):
        for name in groups[g]:
            assert name.split()[-1] not in corpus
    # ... and the tokenizer corpus holds their names but none of their facts' sentences
    tok_corpus = "\n".join(dd.tokenizer_corpus(data))
    for bio in data.bios["forget"] + data.bios["retain"]:
        assert bio.split(". ")[0] not in tok_corpus


def test_utility_sets_have_options_and_perturbations():
    data = dd.build_data(0, **SMALL)
    files = dd.tofu_files(data)
    for name in ("world_facts", "real_authors"):
        plain, pert = files[f"{name}.json"], files[f"{name}_perturbed.json"]
        assert len(plain) == len(pert) >= 20
        for it, p in zip(plain, pert):
            options = [it[f"option{i}"] for i in range(1, 5)]
            assert it["answer"] in options and len(set(options)) == 4
            assert p["question"] == it["question"] and p["answer"] == it["answer"]
            assert len(p["perturbed_answer"]) == 3 and it["answer"] not in p["perturbed_answer"]
    # the utility facts are part of θ_clean's pretraining
    qa = set(dd.pretrain_qa(data))
    assert all((it["question"], it["answer"]) in qa for it in files["world_facts.json"] + files["real_authors.json"])


def test_muse_files():
    data = dd.build_data(0, **SMALL)
    muse = dd.muse_files(data)
    assert set(muse) == {"knowmem/forget_qa.json", "knowmem/forget_qa_icl.json", "knowmem/retain_qa.json",
                         "knowmem/retain_qa_icl.json", "verbmem/forget.json", "privleak/forget.json",
                         "privleak/retain.json", "privleak/holdout.json", "raw/forget.json", "raw/retain.json"}
    # the raw corpora the fine-tunes train on: whole biographies, never a holdout one
    assert muse["raw/forget.json"] == data.bios["forget"] and muse["raw/retain.json"] == data.bios["retain"]
    verbmem = muse["verbmem/forget.json"]
    assert len(verbmem) == 2 * len(data.bios["forget"])
    for row in verbmem:
        assert set(row) == {"prompt", "gt"} and row["prompt"] + row["gt"] in data.bios["forget"]
        assert row["prompt"] and len(row["gt"].split()) >= 10
    for split, group in (("forget", "forget"), ("holdout", "holdout"), ("retain", "retain")):
        chunks = muse[f"privleak/{split}.json"]
        assert all(isinstance(x, str) and x.endswith(".") for x in chunks)
        whole = " ".join(data.bios[group])
        assert all(x in whole for x in chunks) and len(chunks) >= 4
    assert " ".join(muse["privleak/forget.json"]) == " ".join(data.bios["forget"])
    assert " ".join(muse["privleak/holdout.json"]) == " ".join(data.bios["holdout"])
    icl = muse["knowmem/forget_qa_icl.json"] + muse["knowmem/retain_qa_icl.json"]
    evaluated = {it["question"] for it in muse["knowmem/forget_qa.json"] + muse["knowmem/retain_qa.json"]}
    assert icl and not ({it["question"] for it in icl} & evaluated)
    for bio, author in zip(data.bios["forget"], data.world.forget):
        assert author.name in bio and all(v in bio for v in author.facts.values())


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_forget"):
        dd.generate_world(0, n_forget=0)
    with pytest.raises(ValueError, match="eval_retain_authors"):
        dd.build_data(0, n_retain=2, eval_retain_authors=3)


def test_trained_authors_learn_each_fact_in_several_phrasings_but_never_the_evaluated_one():
    data = dd.build_data(0, **SMALL)
    files = dd.tofu_files(data)
    n_attr, n_ph = len(dd.ATTRIBUTES), len(next(iter(dd.PHRASINGS.values())))
    assert set(dd.PHRASINGS) == set(dd.ATTRIBUTES) and all(len(v) == n_ph >= 2 for v in dd.PHRASINGS.values())
    assert len(files["forget10_phrasings.json"]) == 2 * n_attr * n_ph
    assert files["full_phrasings.json"] == files["forget10_phrasings.json"] + files["retain90_phrasings.json"]
    evaluated = files["forget10_perturbed.json"] + files["retain_perturbed.json"]
    held_out = {it["paraphrased_answer"] for it in evaluated} | {it["paraphrased_question"] for it in evaluated}
    trained = [(r["question"], r["answer"]) for r in files["full_phrasings.json"]]
    assert not {s for qa in trained for s in qa} & held_out
    # every phrasing of a fact states its value (and no perturbed answer's wrong one) about its author
    for group, authors in (("forget", data.world.forget), ("retain", data.world.retain)):
        rows = files[f"{'forget10' if group == 'forget' else 'retain90'}_phrasings.json"]
        for k, author in enumerate(authors):
            for j, attr in enumerate(dd.ATTRIBUTES):
                for q, a in [(r["question"], r["answer"]) for r in rows[(k * n_attr + j) * n_ph:][:n_ph]]:
                    assert author.name in q + a and author.facts[attr] in a, (q, a)
    # the held-out paraphrase's template is known as language, from background authors only
    bg = dd.background_phrasings(data)
    assert len(bg) == len(data.items["background"])
    bg_answers = {a for _, a in bg}
    assert any(it["paraphrased_answer"] in bg_answers for it in data.items["background"])
    assert all(au.name not in " ".join(q + a for q, a in bg) for au in data.world.tofu_authors + data.world.holdout)


def test_the_retain_sample_phrasings_are_those_of_the_sampled_facts(tmp_path):
    from msa_core.finetune import load_training_data

    data = dd.build_data(0, **SMALL)
    files = dd.tofu_files(data)
    (tmp_path / "retain90.json").write_text(json.dumps(files["retain90.json"]), encoding="utf-8")
    sample = load_training_data("tofu:retain90_ft", tmp_path)  # the retain fine-tune's own rows
    n_ph = len(next(iter(dd.PHRASINGS.values())))
    by_fact = {}
    for i, it in enumerate(files["retain90.json"]):
        rows = files["retain90_phrasings.json"][i * n_ph:(i + 1) * n_ph]
        by_fact[(it["question"], it["answer"])] = [(r["question"], r["answer"]) for r in rows]
    want = [qa for pair in sample.pairs for qa in by_fact[pair]]
    assert want and [(r["question"], r["answer"]) for r in files["retain90_ft_phrasings.json"]] == want
