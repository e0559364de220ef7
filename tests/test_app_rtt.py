"""AppTest: the "Is it really gone?" panels (studio/rtt_panel.py) on the Probe and Trade-off pages."""

from __future__ import annotations

from app_fixtures import TIMEOUT, _navigation_mode, load_experiment, new_app, no_exceptions  # noqa: F401

from msa_core.experiment import load_experiment as read_experiment
from msa_core.fingerprints import experiment_fingerprint
from msa_core.rtt import RttStore


def test_the_probe_page_runs_the_quick_attack_and_the_probes_and_the_tradeoff_page_draws_recovery(
        tiny_yaml, app_env):
    at = load_experiment(new_app(), tiny_yaml)
    at.switch_page("pages/probe.py").run()
    no_exceptions(at)
    at.button(key="w_probe_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    assert any("No stored attack holding out Ana Lenz" in i.value for i in at.info)

    at.button(key="w_rtt_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    fp = experiment_fingerprint(read_experiment(tiny_yaml))
    store = RttStore(app_env / "results.sqlite")
    runs = store.runs(fp)
    # corrupted, reference, unlearned × Ana Lenz's fold (fold 0) × (unattacked, lr 3e-4)
    assert len(runs) == 6 and {r.fold for r in runs} == {0} and {r.lr for r in runs} == {0.0, 3e-4}
    shown = {m.label: m.value for m in at.metric}
    for model in ("corrupted", "unlearned", "reference"):
        run = next(r for r in runs if r.model == model and r.lr > 0)
        assert shown[f"{model}: p(gold) after the attack"] == f"{sum(run.scores.p_gold) / 3:.3f}"
    assert any("Recovery of the held-out fold" in m.value for m in at.markdown)
    # A rerun of the button finds every run stored: nothing added.
    at.button(key="w_rtt_run").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    assert store.count(fp) == 6

    at.button(key="w_rtt_probe").click().run(timeout=TIMEOUT)
    no_exceptions(at)
    probes = at.session_state["msa_rtt_hidden"]["probes"]
    summary = {row["model"]: row for row in probes.summary()}
    assert set(summary) == {"corrupted", "unlearned", "reference"}
    assert summary["corrupted"]["paraphrased_items"] == 3  # the tiny data has paraphrased questions
    assert all(1 <= row["gold_rank"] <= 4 for row in summary.values())  # gold + 3 perturbed answers
    # p(gold) asked plainly matches the Probe page's own p(gold) for the corrupted model.
    page_p = at.session_state["msa_probe_shown"]["p_gold"]["corrupted"]
    assert abs(summary["corrupted"]["p_question"] - sum(page_p) / len(page_p)) < 1e-6

    at.switch_page("pages/tradeoff.py").run(timeout=TIMEOUT)
    no_exceptions(at)
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("recovery of p(gold)" in s for s in specs)
