"""msa_core.eval.run (with tofu/muse): TOFU and MUSE evaluation of tiny models, values against
independent per-sequence computation; evaluation through a real tiny Engine; results keyed by the model's settings."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_engine,
    make_experiment,
    make_model,
    make_tokenizer,
    record_sessions,
    write_muse,
    write_tofu,
)
from scipy import stats

from msa_core.engine import Engine, ModuleFilter
from msa_core.eval import evaluate, evaluate_model
from msa_core.eval.run import ReferenceCache, reference_result, reference_stats
from msa_core.eval.settings import lookup_settings
from msa_core.eval.store import ResultStore
from msa_core.prompts import encode_continuation, encode_qa


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalbench")
    tofu = write_tofu(root / "tofu")
    # a duplicated perturbed answer: must be scored once
    rows = json.loads((tofu / "forget10_perturbed.json").read_text())
    rows[0]["perturbed_answer"][1] = rows[0]["perturbed_answer"][0]
    (tofu / "forget10_perturbed.json").write_text(json.dumps(rows))
    exp = make_experiment(root, tofu=tofu, muse=write_muse(root / "muse"))
    tok = make_tokenizer()
    return exp, tok, make_model(len(tok), seed=5)


def _nll(model, tok, q, a):
    p, c = encode_qa(tok, q, a)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([p + c]), labels=torch.tensor([[-100] * len(p) + c]))
    return float(out.loss), out.logits[0, len(p) - 1 : -1].argmax(-1).tolist(), c


def test_tofu_fast_tier_matches_independent_computation(eval_setup):
    exp, tok, model = eval_setup
    res = evaluate_model(model, tok, exp, tier="fast", benchmark="tofu")
    f = json.loads((exp.data.tofu / "forget10_perturbed.json").read_text())
    probs, trs, es, em, es_paper = [], [], [], [], []
    for r in f:
        nll_a, pred, labels = _nll(model, tok, r["question"], r["answer"])
        probs.append(math.exp(-nll_a))
        nll_p = _nll(model, tok, r["question"], r["paraphrased_answer"])[0]
        nll_w = [_nll(model, tok, r["question"], w)[0] for w in r["perturbed_answer"]]
        trs.append(math.exp(-np.mean(nll_w)) / math.exp(-nll_p))
        ok = [a == b for a, b in zip(pred[:-1], labels[:-1])]  # EOS prediction dropped (open-unlearning)
        em.append(sum(ok) / len(ok))
        k = len(ok)
        while k > 0 and ok[k - 1]:
            k -= 1
        es_paper.append(1 - k / len(ok))  # the paper: k* = L (ES 0) when the last token is wrong
        # open-unlearning's loop: the first k in 0..L-1 whose suffix is all right, else it ends at L-1
        k_ou = next((j for j in range(len(ok)) if all(ok[j:])), len(ok) - 1)
        es.append(1 - k_ou / len(ok))
    m = res.metrics
    np.testing.assert_allclose(m["forget_prob"].per_item, probs, rtol=1e-4)
    assert m["forget_prob"].value == pytest.approx(np.mean(probs), rel=1e-4)
    np.testing.assert_allclose(m["forget_truth_ratio"].per_item, trs, rtol=1e-4)
    assert m["forget_truth_ratio"].value == pytest.approx(np.mean(np.minimum(trs, 1 / np.array(trs))), rel=1e-4)
    assert m["exact_memorization"].per_item == pytest.approx(em)
    assert m["extraction_strength"].per_item == pytest.approx(es)
    assert max(em) > 0  # the sharpened random model gets some tokens right: the check is not vacuous
    assert es != es_paper  # some last token is wrong here, so the two conventions differ
    assert res.settings["conventions"]["extraction_strength"] == "open-unlearning"
    paper = evaluate_model(model, tok, replace(exp, conventions=(("extraction_strength", "paper"),)), tier="fast",
                           benchmark="tofu")
    assert paper.metrics["extraction_strength"].per_item == pytest.approx(es_paper)
    assert paper.settings["conventions"]["extraction_strength"] == "paper" and paper.settings_key != res.settings_key

    ra = json.loads((exp.data.tofu / "real_authors_perturbed.json").read_text())
    norm, ra_tr = [], []
    for r in ra:
        pc = math.exp(-_nll(model, tok, r["question"], r["answer"])[0])
        pw = [math.exp(-_nll(model, tok, r["question"], w)[0]) for w in r["perturbed_answer"]]
        norm.append(pc / (pc + sum(pw)))
        ra_tr.append(stats.gmean(pw) / pc)
    np.testing.assert_allclose(m["ra_prob"].per_item, norm, rtol=1e-4)
    assert m["ra_truth_ratio"].value == pytest.approx(np.mean(np.maximum(0, 1 - np.array(ra_tr))), rel=1e-4, abs=1e-6)
    six = [m[k].value for k in ("retain_prob", "retain_truth_ratio", "ra_prob", "ra_truth_ratio", "wf_prob",
                                "wf_truth_ratio")]
    assert m["model_utility_tf"].value == pytest.approx(stats.hmean(six) if min(six) > 0 else 0.0)
    assert "forget_quality" not in m and "model_utility" not in m and "forget_rouge" not in m  # no reference, fast tier
    assert res.settings["counts"] == {"forget": 6, "retain": 5, "ra": 4, "wf": 5, "holdout": 4}
    assert res.model == "composed" and res.tier == "fast" and res.settings["key"]


def test_no_sequence_scored_twice(eval_setup):
    exp, tok, model = eval_setup
    rows_seen = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: rows_seen.append(kw["input_ids"].shape[0]),
                                        with_kwargs=True)
    try:
        evaluate_model(model, tok, exp, tier="fast", benchmark="tofu", batch_size=7)
    finally:
        h.remove()
    unique = set()
    total = 0
    for name in ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        for r in json.loads((exp.data.tofu / f"{name}.json").read_text()):
            para = [r["paraphrased_answer"]] if "paraphrased_answer" in r else []
            answers = [r["answer"], *para, *r["perturbed_answer"]]
            total += len(answers)
            unique.update((r["question"], a) for a in answers)
    assert sum(rows_seen) == len(unique) < total


def test_reference_against_itself_gives_forget_quality_one_and_privleak_zero(eval_setup):
    exp, tok, model = eval_setup
    ref = evaluate_model(model, tok, exp, tier="fast")
    rs = reference_stats(ref)
    again = evaluate_model(model, tok, exp, tier="fast", reference_tr=rs.forget_tr, reference_auc=rs.muse_auc,
                           reference_tofu_auc=rs.tofu_auc)
    assert again.metrics["forget_quality"].value == pytest.approx(1.0)
    assert again.metrics["muse_privleak"].value == pytest.approx(0.0)
    assert again.metrics["tofu_privleak"].value == pytest.approx(0.0) and rs.tofu_auc_source.startswith("model:")
    other = evaluate_model(make_model(len(tok), seed=11), tok, exp, tier="fast",
                           reference_tr=rs.forget_tr, reference_auc=rs.muse_auc)
    assert other.metrics["forget_quality"].value < 1.0


def test_muse_fast_tier_min_k_against_direct(eval_setup):
    exp, tok, model = eval_setup
    res = evaluate_model(model, tok, exp, tier="fast", benchmark="muse")
    from msa_core.eval import metrics as M
    from msa_core.eval.data import load_muse

    data = load_muse(exp.data.muse)
    texts = list(data.privleak_forget) + list(data.privleak_holdout)
    mink, mink_paper = [], []
    for t in texts:
        p, c = encode_continuation(tok, "", t)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0, :-1].double(), -1)
        lp = logp.gather(-1, torch.tensor(c)[:, None])[:, 0].numpy()
        n = max(1, int(0.4 * len(lp)))
        mink_paper.append(-np.sort(lp)[:n].mean())  # the MUSE paper's code: every text token
        lp = lp[:-1]  # open-unlearning's tokenwise_logprobs drops the last labelled token
        n = max(1, int(0.4 * len(lp)))
        mink.append(-np.sort(lp)[:n].mean())
    np.testing.assert_allclose(res.metrics["muse_mink_auc"].per_item, mink, rtol=1e-5)
    nf = len(data.privleak_forget)
    assert res.metrics["muse_mink_auc"].value == pytest.approx(M.muse_mia_auc(mink[:nf], mink[nf:]))
    paper = evaluate_model(model, tok, replace(exp, conventions=(("min_k", "muse-paper"),)), tier="fast",
                           benchmark="muse")
    np.testing.assert_allclose(paper.metrics["muse_mink_auc"].per_item, mink_paper, rtol=1e-5)
    assert not np.allclose(mink, mink_paper) and paper.settings["conventions"]["min_k"] == "muse-paper"
    assert "muse_minkpp_auc" in res.metrics and "muse_privleak" not in res.metrics
    assert res.settings["counts"] == {"privleak_forget": 3, "privleak_holdout": 3}


def test_full_tier_rouge_with_known_generations(eval_setup, monkeypatch):
    exp, tok, model = eval_setup
    import msa_core.generation as gen

    forget = [r["answer"] for r in json.loads((exp.data.tofu / "forget10_perturbed.json").read_text())]
    calls = []

    def fake_answers(model, tok, questions, *, max_new_tokens, batch_size=16, **kw):
        assert max_new_tokens == 200
        calls.append(len(questions))
        # the forget split (asked first): the exact answers; every other split: nothing
        return list(forget) if len(calls) == 1 else [""] * len(questions)

    def fake_text(model, tok, prompts, *, max_new_tokens, batch_size=16, stop=None, **kw):
        if max_new_tokens == 128:
            return ["Question: What genre does Bo Kress write?"] * len(prompts)
        assert max_new_tokens == 32 and stop
        return [" Velmora\n\nQuestion: more"] * len(prompts)

    monkeypatch.setattr(gen, "generate_answers", fake_answers)
    monkeypatch.setattr(gen, "generate_text", fake_text)
    res = evaluate_model(model, tok, exp, tier="full", benchmark="all")
    m = res.metrics
    assert m["forget_rouge"].value == 1.0 and m["retain_rouge"].value == 0.0
    assert m["model_utility"].value == 0.0  # a zero part zeroes the harmonic mean
    # verbmem gt for item i is CORPUS[(i+1) % 4]; item 0's gt starts with the generated question
    assert m["muse_verbmem_forget"].per_item[0] > 0.3 and m["muse_verbmem_forget"].per_item[1] < 0.3
    # knowmem: " Velmora\n\nQuestion: more" is cut to "Velmora"; forget answers are cities, item 0 is Velmora
    assert m["muse_knowmem_forget"].per_item == [1.0, 0.0, 0.0, 0.0]
    assert res.generations["knowmem_forget"][0] == "Velmora"
    assert res.generations["forget"] == forget and calls == [6, 5, 4, 5]


def test_full_tier_real_generation_runs(eval_setup, monkeypatch):
    exp, tok, model = eval_setup
    import msa_core.eval.muse as muse_mod
    import msa_core.eval.tofu as tofu_mod

    # the real generate_answers / generate_text, with short budgets to keep the test fast
    monkeypatch.setattr(tofu_mod, "ROUGE_MAX_NEW_TOKENS", 6)
    monkeypatch.setattr(muse_mod, "VERBMEM_MAX_NEW_TOKENS", 6)
    monkeypatch.setattr(muse_mod, "KNOWMEM_MAX_NEW_TOKENS", 6)
    res = evaluate_model(model, tok, exp, tier="full", benchmark="all", subset=1)
    for name in ("forget_rouge", "retain_rouge", "ra_rouge", "wf_rouge", "model_utility", "muse_verbmem_forget",
                 "muse_knowmem_forget", "muse_knowmem_retain"):
        assert 0.0 <= res.metrics[name].value <= 1.0, name
    assert len(res.generations["forget"]) == 1


def test_evaluate_through_engine_one_session_and_cached_reference(eval_setup, tmp_path):
    exp, _, _ = eval_setup
    eng = make_engine(tmp_path, tofu=exp.data.tofu)
    sessions = record_sessions(eng)
    calls = []
    h = eng.side_model("reference").register_forward_pre_hook(lambda *a: calls.append(1))
    cache = ReferenceCache()
    r1 = evaluate(eng, 1.0, 0.5, benchmark="tofu", subset=3, reference_cache=cache)
    n_ref = len(calls)
    r2 = evaluate(eng, 2.0, 0.0, benchmark="tofu", subset=3, reference_cache=cache)
    assert n_ref > 0 and len(calls) == n_ref  # reference evaluated once: the caller's cache holds it
    assert len(cache) == 1
    assert sessions == [(1.0, 0.5), (2.0, 0.0)]
    assert (r1.alpha, r1.beta, r2.alpha) == (1.0, 0.5, 2.0)
    assert r1.fingerprint == eng.fingerprint and 0.0 <= r1.metrics["forget_quality"].value <= 1.0
    assert r1.settings["reference"]["tr"].startswith("model:")
    assert r1.settings_key == r2.settings_key
    evaluate(eng, 2.0, 0.0, benchmark="tofu", subset=3)  # no cache of the caller's: the reference is evaluated again
    assert len(calls) > n_ref
    h.remove()
    ref = reference_result(eng, benchmark="tofu", subset=3)
    assert ref.model == "reference" and ref.settings["counts"]["forget"] == 3


def test_reference_from_open_unlearning_file(eval_setup, tmp_path):
    exp, tok, model = eval_setup

    trs = [0.5, 1.0, 2.0, 0.7, 1.3, 0.9]
    f = tmp_path / "TOFU_EVAL.json"
    by_index = {str(i): {"score": v} for i, v in enumerate(trs)}
    f.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.7, "value_by_index": by_index}}))
    # no reference model: the file is enough for TOFU
    eng = make_engine(tmp_path, tofu=exp.data.tofu, reference_eval=f, with_reference=False)
    assert eng.side_model("reference") is None
    res = evaluate(eng, 1.0, 0.0, benchmark="tofu")
    mine = res.metrics["forget_truth_ratio"].per_item
    assert res.metrics["forget_quality"].value == pytest.approx(stats.ks_2samp(mine, trs).pvalue)
    assert res.settings["reference"]["tr"].startswith("file:")
    # a subset is compared with every reference item, as open-unlearning's ks_test does (and says so)
    sub = evaluate(eng, 1.0, 0.0, benchmark="tofu", subset=2)
    assert sub.metrics["forget_quality"].value == pytest.approx(
        stats.ks_2samp(sub.metrics["forget_truth_ratio"].per_item, trs).pvalue)
    assert sub.metrics["forget_quality"].value != pytest.approx(
        stats.ks_2samp(sub.metrics["forget_truth_ratio"].per_item, trs[:2]).pvalue)
    assert sub.settings["tofu"]["forget_quality_reference"] == "all items"


def test_stored_results_are_keyed_by_module_filter_dtype_and_device(eval_setup, tmp_path):
    """Issue 16 case 4: a filtered or bf16 result is never returned for a plain request (and back)."""
    exp, _, _ = eval_setup
    plain = make_engine(tmp_path, tofu=exp.data.tofu)
    filtered = Engine.load(plain.experiment, device="cpu", cache_dir=tmp_path / "cache",
                           module_filter=ModuleFilter(include=r"mlp", layers=(0, 0)))
    bf16 = Engine.load(plain.experiment, device="cpu", cache_dir=tmp_path / "cache", dtype="bfloat16")
    assert plain.fingerprint == filtered.fingerprint == bf16.fingerprint  # same checkpoints
    assert plain.model_settings == {"dtype": "float32", "device": "cpu", "module_filter": None}
    assert filtered.model_settings["module_filter"] == {"include": "mlp", "layers": [0, 0]}
    assert bf16.model_settings["dtype"] == "bfloat16"
    store = ResultStore(tmp_path / "results.sqlite")
    cache = ReferenceCache()
    got = {}
    for name, eng in (("filtered", filtered), ("bf16", bf16), ("plain", plain)):
        sessions = record_sessions(eng)
        got[name] = evaluate(eng, 2.0, 1.0, benchmark="tofu", subset=3, store=store, reference_cache=cache)
        assert sessions == [(2.0, 1.0)], f"{name} was answered from another engine's stored row"
        assert got[name].settings["model"] == eng.model_settings
    keys = {name: r.settings_key for name, r in got.items()}
    assert len(set(keys.values())) == 3 and store.count(plain.fingerprint) == 3
    tr = {name: r.metrics["forget_truth_ratio"].value for name, r in got.items()}
    assert tr["filtered"] != pytest.approx(tr["plain"], abs=1e-6)  # the filter changes the model...
    # ...and a plain request gets the plain row back (from the store: no new session), never the filtered one
    sessions = record_sessions(plain)
    again = evaluate(plain, 2.0, 1.0, benchmark="tofu", subset=3, store=store, reference_cache=cache)
    assert sessions == [] and again.settings_key == keys["plain"]
    assert again.metrics["forget_truth_ratio"].value == tr["plain"]
    # The app's lookup (no evaluation) finds each engine's own row, the newest row being another engine's.
    for name, eng in (("plain", plain), ("filtered", filtered), ("bf16", bf16)):
        look = lookup_settings(eng, tier="fast", benchmark="tofu", subset=3)
        row = store.latest(eng.fingerprint, 2.0, 1.0, tier="fast", lookup_key=look.lookup_key)
        assert row is not None and row.settings_key == keys[name], name
    other_subset = lookup_settings(plain, tier="fast", benchmark="tofu", subset=2)
    assert store.latest(plain.fingerprint, 2.0, 1.0, tier="fast", lookup_key=other_subset.lookup_key) is None
    # The reference model's rows are keyed by its own dtype too (the filter does not apply to it).
    refs = store.results(f"{plain.fingerprint}#reference")
    assert sorted(r.settings["model"]["dtype"] for r in refs) == ["bfloat16", "float32"]
    assert all(r.settings["model"]["module_filter"] is None for r in refs)


def test_a_long_evaluation_lets_a_waiting_session_in_between_batches_and_keeps_its_numbers(tmp_path):
    import threading

    engine = make_engine(tmp_path, tofu=write_tofu(tmp_path / "tofu"))
    cache = ReferenceCache()
    alone = evaluate(engine, 1.0, 0.5, tier="fast", benchmark="tofu", batch_size=1, reference_cache=cache)

    other_done = threading.Event()
    other_saw: list[float] = []

    def other_session() -> None:  # another browser session moving its slider to (2, 0)
        with engine.session(2.0, 0.0):
            other_saw.append(engine.alpha)
        other_done.set()

    started: list[threading.Thread] = []

    def progress(fraction: float, message: str) -> None:
        if fraction > 0.3 and not started:  # inside the session, between two scoring batches
            t = threading.Thread(target=other_session)
            t.start()
            started.append(t)
            while engine.lock.waiting() == 0:
                threading.Event().wait(0.001)

    shared = evaluate(engine, 1.0, 0.5, tier="fast", benchmark="tofu", batch_size=1, reference_cache=cache,
                      progress=progress)
    finished_inside = other_done.is_set()  # read before anything else can run
    started[0].join(5)
    assert finished_inside, "the waiting session had to wait for the whole evaluation"
    assert other_saw == [2.0]
    assert shared.flat() == alone.flat()  # recomposed at (1, 0.5) before the next batch
    assert (engine.alpha, engine.beta) == (1.0, 0.5)


def test_tofu_forget_vs_holdout_min_k_and_privleak_against_direct(eval_setup):
    exp, tok, model = eval_setup
    res = evaluate_model(model, tok, exp, tier="fast", benchmark="tofu")

    def scores(rows, drop_last):
        out = []
        for r in rows:
            p, c = encode_qa(tok, r["question"], r["answer"])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].double(), -1)
            lp = logp[len(p) - 1 : -1].gather(-1, torch.tensor(c)[:, None])[:, 0].numpy()
            lp = lp[:-1] if drop_last else lp  # open-unlearning leaves out the EOS (last labelled token)
            out.append(-np.sort(lp)[: max(1, int(0.4 * len(lp)))].mean())
        return out

    forget = json.loads((exp.data.tofu / "forget10_perturbed.json").read_text())
    holdout = json.loads((exp.data.tofu / "holdout10.json").read_text())
    f, h = scores(forget, True), scores(holdout, True)
    np.testing.assert_allclose(res.metrics["tofu_mink_auc"].per_item, f + h, rtol=1e-5)
    # open-unlearning's AUC: labels forget 0 / holdout 1, score = Min-K (higher = less likely); ours is 1 − it
    ou_auc = np.mean([1.0 if hs > fs else 0.5 if hs == fs else 0.0 for fs in f for hs in h])
    assert res.metrics["tofu_mink_auc"].value == pytest.approx(1 - ou_auc)
    # privleak without a reference model: open-unlearning's default reference AUC 0.5
    assert res.metrics["tofu_privleak"].value == pytest.approx(((1 - ou_auc) - 0.5) / 0.5 * 100)
    assert res.settings["reference"]["tofu_auc"] == "default:0.5" and res.settings["tofu"]["holdout_split"]
    paper = evaluate_model(model, tok, replace(exp, conventions=(("min_k", "muse-paper"),)), benchmark="tofu")
    np.testing.assert_allclose(paper.metrics["tofu_mink_auc"].per_item, scores(forget, False) + scores(holdout, False),
                               rtol=1e-5)
