"""End to end: the quick demo evaluated through the real Engine (slow: builds the quick demo)."""

from __future__ import annotations

import pytest
from eval_fixtures import eval_single_thread  # noqa: F401  (autouse: one torch thread)


@pytest.mark.slow
def test_quick_demo_evaluation_through_the_engine(quick_demo, cache_dir, tmp_path):
    from msa_core.engine import Engine
    from msa_core.eval import ResultStore, evaluate, reference_result, run_sweep
    from msa_core.eval.openunlearning import export_open_unlearning
    from msa_core.experiment import load_experiment

    exp = load_experiment(quick_demo)
    engine = Engine.load(exp, device="cpu")
    store = ResultStore(tmp_path / "results.sqlite")

    corrupted = evaluate(engine, 0.0, 0.0, tier="full", store=store)
    ref = reference_result(engine, store=store)
    assert ref is not None and ref.model == "reference"
    m = corrupted.flat()
    for name in ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge", "retain_prob",
                 "retain_rouge", "retain_truth_ratio", "ra_prob", "ra_rouge", "wf_prob", "wf_rouge",
                 "extraction_strength", "exact_memorization"):
        assert name in m, name
        assert m[name] == m[name], name  # not NaN
    # the corrupted model knows the forget set far better than the retain-only reference
    assert m["forget_prob"] > ref.flat()["forget_prob"]
    if exp.data.muse is not None:
        assert "muse_privleak" in m and "muse_verbmem_forget" in m

    # a stored point comes back without recomputation
    again = evaluate(engine, 0.0, 0.0, tier="full", store=store)
    assert again.flat() == pytest.approx(m, nan_ok=True)

    # unlearning (α > 0) lowers what the model knows of the forget set
    lo, hi = exp.alpha_range
    alphas = [a for a in (0.0, 1.0, 2.0) if lo <= a <= hi]
    results = run_sweep(engine, store, alphas, [0.0], tier="fast")
    fast = {r.alpha: r.flat() for r in results}
    assert min(fast[a]["forget_prob"] for a in alphas if a > 0) < fast[0.0]["forget_prob"]
    assert store.grid(engine.fingerprint, tier="fast").shape[0] == len(alphas)
    written = export_open_unlearning(corrupted, tmp_path / "ou")
    assert any(p.name == "TOFU_EVAL.json" for p in written)
