"""The "Is it really gone?" panels: the relearning attack (msa_core.rtt) and the cheap hidden-knowledge
probes (msa_core.eval.hidden), drawn into the Probe and Trade-off pages.

- :func:`probe_section` (Probe page, one entity): the quick relearning attack holding out the
  entity's fold — before / after per model, side by side, with a button that runs it — and the
  four cheap probes for corrupted / unlearned / reference.
- :func:`recovery_panel` (Trade-off page): "recovery vs forget quality", one marker per stored
  attack of an (α, β) point.

Attack runs live in the results database (``msa rtt`` writes the same rows), so the CLI and the
app see one source; the probes' last result is kept in the session (keyed by its inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd
import streamlit as st

from msa_core.eval.hidden import PROBE_EXPLANATIONS, HiddenProbes, hidden_probes
from msa_core.rtt import AttackSettings, RttReport, RttStore, entity_folds, load_report, run_rtt
from msa_core.rtt.folds import fold_of_entity
from msa_core.rtt.run import stored_reports
from msa_core.targets import Side, Target
from studio import charts, labels, resources, session, widgets

if TYPE_CHECKING:
    from msa_core.engine import Engine

# Session keys of this panel (the probes' last result and its inputs).
K_HIDDEN = "msa_rtt_hidden"  # {"key": inputs, "probes": HiddenProbes}
MODELS = ("corrupted", "unlearned", "reference")
METRIC_LABELS = {"p_gold": "p(gold)", "rouge": "ROUGE-L recall", "exact": "exact answers"}


def _store() -> RttStore:
    return RttStore(resources.store_path())


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _targets(engine: Engine) -> dict[str, Target]:
    return {"corrupted": Side("corrupted"), "unlearned": session.point(), "reference": Side("reference")}


# ----------------------------------------------------------------------------- Probe page
def _attack_tables(report: RttReport, items: Sequence[Any], chosen: Sequence[int]) -> None:
    """Per model: held-out p(gold) before → after, and each of the entity's questions side by side."""
    lr = max(report.lrs())
    models = [m for m in MODELS if m in report.models()]
    per_q: dict[str, dict[int, tuple[float, float, str]]] = {}
    for box, model in zip(st.columns(len(models)), models):
        before, after = report.pooled(model, 0.0), report.pooled(model, lr)
        if before is None or after is None:
            continue
        b = dict(zip(before.items, before.p_gold))
        a = {i: (p, ans) for i, p, ans in zip(after.items, after.p_gold, after.answers)}
        mine = [i for i in chosen if i in a and i in b]
        per_q[model] = {i: (b[i], a[i][0], a[i][1]) for i in mine}
        if mine:
            pb = sum(b[i] for i in mine) / len(mine)
            pa = sum(a[i][0] for i in mine) / len(mine)
            # Only the unlearned model has a good direction: its p(gold) should not come back.
            box.metric(f"{model}: p(gold) after the attack", f"{pa:.3f}", f"{pa - pb:+.3f} vs before",
                       delta_color="inverse" if model == "unlearned" else "off",
                       help="Mean probability of the gold answers of this entity (held out: never trained on "
                            "in the attack).")
    rec = report.recovery().get("unlearned", {})
    st.markdown(f"Recovery of the held-out fold by the unlearned model: **p(gold) {_pct(rec.get('p_gold'))}**, "
                f"ROUGE-L {_pct(rec.get('rouge'))}, exact answers {_pct(rec.get('exact'))} "
                "(0 % = the reference after the same attack, 100 % = the corrupted model after it).")
    rows = []
    for i in chosen:
        row: dict[str, Any] = {"question": items[i].question, "gold": items[i].answer}
        for model, values in per_q.items():
            if i in values:
                row[f"{model} p(gold) before → after"] = f"{values[i][0]:.2f} → {values[i][1]:.2f}"
        if i in per_q.get("unlearned", {}):
            row["unlearned answer after the attack"] = per_q["unlearned"][i][2]
        rows.append(row)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _attack_section(engine: Engine, entity: str, chosen: Sequence[int], items: Sequence[Any]) -> None:
    st.markdown("#### Relearning attack (quick)")
    st.caption("Fine-tune each model briefly on the *other* forgotten authors and ask about this one. A model that "
               "never learned these facts cannot recall them from the others; one that only hid them does "
               "(Deeb & Roger's RTT). Settings: " + _settings_text(AttackSettings.quick()))
    if engine.experiment.checkpoints.reference is None:
        st.info("The attack measures recovery against the reference (retain-only) model; this experiment has none.")
        return
    try:
        folds = entity_folds(items, AttackSettings.quick().folds)
    except ValueError as exc:
        st.info(f"No relearning attack here: {exc}")
        return
    fold = fold_of_entity(folds, entity)
    if fold is None:
        st.info(f"{entity} is not one of the forget set's entities.")
        return
    here = session.point()
    settings = AttackSettings.quick()
    store = _store()
    if st.button(f"Run the quick relearning attack holding out {entity}", key="w_rtt_run",
                 icon=":material/model_training:",
                 help="Trains copies of the corrupted, unlearned and reference models; the app's models are not "
                      "changed. Runs already stored are reused."):
        bar = st.progress(0.0, text="starting the attack")
        try:
            run_rtt(engine, here, settings, store=store, held_out=[fold.index], progress=widgets.bar_progress(bar))
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Relearning attack failed", exc)
            return
        finally:
            bar.empty()
    report = load_report(engine, here, settings, store)
    report.runs = [r for r in report.runs if r.fold == fold.index]
    if not report.complete():
        st.info(f"No stored attack holding out {entity} at α = {here.alpha:g}, β = {here.beta:g}. "
                f"Press the button, or run `msa rtt EXPERIMENT --alpha {here.alpha:g} --beta {here.beta:g} --quick`.")
        return
    _attack_tables(report, items, [i for i in chosen if i in fold.items])


def _settings_text(s: AttackSettings) -> str:
    lrs = ", ".join(f"{x:g}" for x in s.lrs or ())
    return f"{s.folds} entity folds, {s.epochs} epochs, lr {lrs}, batch {s.batch_size}."


def _probe_rows(probes: HiddenProbes) -> pd.DataFrame:
    rows = []
    for r in probes.summary():
        rows.append({
            "model": r["model"],
            "gold rank (1 = best)": r["gold_rank"], "gold ranked first": r["gold_first"],
            "gold log-prob": r["gold_logprob"], "p(gold) asked plainly": r["p_question"],
            "p(gold) paraphrased": r["p_paraphrase"], "p(gold) few-shot": r["p_few_shot"],
            "logit lens: best layer": r["lens_peak_layer"], "logit lens: best p": r["lens_peak_prob"],
        })
    return pd.DataFrame(rows).set_index("model").astype(float).round(3).T


def _hidden_section(engine: Engine, entity: str, chosen: Sequence[int], set_items: Sequence[Any]) -> None:
    st.markdown("#### Cheap probes for hidden knowledge")
    for name, title in (("perturbed_rank", "Gold vs perturbed answers"), ("paraphrase", "Paraphrased question"),
                        ("few_shot", "Few-shot prompt"), ("logit_lens", "Logit lens")):
        st.caption(f"**{title}.** {PROBE_EXPLANATIONS[name]}")
    targets = _targets(engine)
    if engine.experiment.checkpoints.reference is None:
        targets.pop("reference")
    here = session.point()
    key = (*resources.model_key(engine), entity, tuple(chosen), here.alpha, here.beta)
    if st.button("Run the probes", key="w_rtt_probe", icon=":material/troubleshoot:"):
        retained = resources.question_sets(engine).sets.get("retain", [])
        items = [set_items[i] for i in chosen]
        try:
            with st.spinner("Scoring the probes"):
                probes = hidden_probes(engine, targets, items, retained)
        except widgets.CORE_ERRORS as exc:
            widgets.show_error("Probes failed", exc)
            return
        session.put(K_HIDDEN, {"key": key, "probes": probes})
    shown = session.get(K_HIDDEN)
    if not shown or shown.get("key") != key:
        st.info(f"Press *Run the probes* to score {len(chosen)} questions about {entity} on "
                f"{', '.join(targets)}.")
        return
    probes: HiddenProbes = shown["probes"]
    st.dataframe(_probe_rows(probes), width="stretch")
    if not any(p is not None for m in probes.paraphrase.values() for p in m):
        st.caption("No paraphrased questions in this data: the paraphrase probe is skipped.")
    lens = {m: [sum(item[k]["prob"] for item in rows) / len(rows) for k in range(len(rows[0]))]
            for m, rows in probes.logit_lens.items() if rows}
    if lens:
        df = pd.DataFrame(lens, index=pd.Index(range(1, len(next(iter(lens.values()))) + 1), name="layer"))
        st.caption("Logit lens: mean probability of the gold answer's first token read out of each layer.")
        st.line_chart(df, x_label="layer", y_label="p(gold first token)", height=220)


def probe_section(engine: Engine, entity: str, item_indices: Sequence[int], *, set_name: str = "forget") -> None:
    """The Probe page's "Is it really gone?" section for one entity's items of ``set_name``."""
    st.markdown("### Is it really gone?")
    sets = resources.question_sets(engine).sets
    set_items = sets.get(set_name, [])
    chosen = [int(i) for i in item_indices if 0 <= int(i) < len(set_items)]
    if not chosen:
        st.info("Pick an entity with questions to probe.")
        return
    if set_name == "forget":
        _attack_section(engine, entity, chosen, set_items)
    else:
        st.caption("The relearning attack holds out forget-set authors; pick the forget set to run it.")
    _hidden_section(engine, entity, chosen, set_items)


# ----------------------------------------------------------------------------- Trade-off page
def recovery_rows(engine: Engine) -> pd.DataFrame:
    """One row per stored attack of an (α, β) point: α, β, settings key, the recovery of each metric,
    and the point's forget quality (or forget truth ratio) from the results store where stored."""
    rows = []
    grid = resources.results_grid(engine)
    for rep in stored_reports(engine, _store()):
        if not rep.complete():
            continue
        rec = rep.recovery().get("unlearned", {})
        folds = sorted({r.fold for r in rep.runs})
        lrs = ", ".join(f"{x:g}" for x in rep.lrs())
        row: dict[str, Any] = {"alpha": rep.alpha, "beta": rep.beta, "attack": rep.key,
                               "setting": f"{len(folds)} held-out fold(s), lr {lrs}",
                               **{f"recovery {METRIC_LABELS[m]}": rec.get(m) for m in METRIC_LABELS}}
        if not grid.empty:
            at = grid[(grid["alpha"] == rep.alpha) & (grid["beta"] == rep.beta)]
            for metric in ("forget_quality", "forget_truth_ratio"):
                if metric in at and at[metric].notna().any():
                    row[metric] = float(at[metric].dropna().iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def recovery_panel(engine: Engine) -> None:
    """The Trade-off page's "recovery vs forget quality" scatter of stored relearning attacks."""
    import plotly.graph_objects as go

    st.markdown("#### Is it really gone? Recovery under a relearning attack")
    st.caption("Each marker is an (α, β) point attacked by `msa rtt` or the Probe page: fine-tuned on some forgotten "
               "authors, measured on the others. 0 % = no more than the reference model relearns, 100 % = as much "
               "as the corrupted model keeps: a point with high forget quality and high recovery only hid the facts.")
    try:
        df = recovery_rows(engine)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error("Stored relearning attacks could not be read", exc)
        return
    if df.empty:
        here = session.point()
        st.info("No relearning attack stored yet. Run one from the Probe page, or "
                f"`msa rtt EXPERIMENT --alpha {here.alpha:g} --beta {here.beta:g} --quick`.")
        return
    x = next((m for m in ("forget_quality", "forget_truth_ratio") if m in df and df[m].notna().any()), None)
    y = "recovery p(gold)"
    shown = df[df[y].notna()]
    if x is None:
        st.caption("No forget quality stored for these points yet (evaluate them): recovery is drawn against α.")
        x = "alpha"
    shown = shown[shown[x].notna()]
    fig = go.Figure()
    labelled: set[tuple[float, float]] = set()
    for n, (_key, part) in enumerate(shown.groupby("attack", sort=False)):
        points = list(zip(part["alpha"], part["beta"]))
        # Label each point once: attacks of other settings on the same point would print over it.
        text = [f"α={a:g}, β={b:g}" if (a, b) not in labelled else "" for a, b in points]
        labelled.update(points)
        fig.add_trace(go.Scatter(
            x=part[x], y=100 * part[y], mode="markers+text", text=text, textposition="top center",
            name=f"attack {n + 1}: {part['setting'].iloc[0]}", marker={"size": 11, "symbol": n % 8},
            customdata=[f"α={a:g}, β={b:g}" for a, b in points],
            hovertemplate="%{customdata}<br>recovery %{y:.0f}%<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=0, line_dash="dot", annotation_text="reference (never learned)")
    fig.add_hline(y=100, line_dash="dot", annotation_text="corrupted")
    x_title = labels.metric_label(x) if x != "alpha" else "α"
    fig.update_layout(height=380, margin={"l": 60, "r": 20, "t": 30, "b": 50}, xaxis_title=x_title,
                      yaxis_title="recovery of p(gold), % (lower is better)",
                      legend={"orientation": "h", "y": -0.25})
    if x == "forget_quality" and not shown.empty and (shown[x] > 0).all():
        # forget quality is a p-value: decades apart on the demo; ticks as numbers (0.01, 0.1), not "2, 3, …"
        ticks = charts.log_ticks(float(shown[x].min()), float(shown[x].max()))
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[charts.tick_text(t) for t in ticks])
    st.plotly_chart(fig, width="stretch", key="rtt_recovery_chart")
    st.dataframe(df, hide_index=True, width="stretch")
