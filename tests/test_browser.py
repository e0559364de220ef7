"""Real-browser end-to-end test: ``streamlit run app.py`` driven by Debian's Chromium (Playwright).

Starts the server as a subprocess (MSA_DEMO_QUICK=1, a private MSA_CACHE_DIR), builds the
quick demo through the first-start offer, moves α on the Playground and checks that the
unlearned answers change while the corrupted ones do not, opens every page without an
error, runs a small sweep so the Trade-off charts fill in, checks that two browser
sessions at different α each get their own answers, and saves a screenshot of every page
under test-output/screenshots/ (or $MSA_SCREENSHOT_DIR; the README's screenshots come from the
full demo through docs/make_screenshots.py instead). A second test walks the Guided demo step
by step, the compare view (a pinned point beside the current one), the Layers and the
Glossary pages, with what a person sees at 1400×900 and 1920×1080 saved for every screen.

Skipped cleanly when /usr/bin/chromium or playwright is missing. Marked slow + browser.
"""

from __future__ import annotations

import os
from pathlib import Path

import browser_helpers as bh
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("MSA_SCREENSHOT_DIR") or ROOT / "test-output" / "screenshots")
CACHE = ROOT / "test-output" / "browser-cache"
PAGES = ("Experiment", "Playground", "Trade-off", "Probe", "Export", "Layers", "Guided demo", "Glossary")
GUIDE_STEPS = 6  # pages/guided.py's STEPS
N_QUESTIONS = 3  # the Playground shows the first three forget questions by default
BIG_ALPHA = 5.0  # the quick demo forgets little; a large α surely changes the composed model
ALPHA_A, ALPHA_B = 0.5, 4.5  # the two sessions' points: not computed before, and non-empty answers
PLAYGROUND_MAX_NEW = 48  # the Playground's default max new tokens

if not bh.CHROMIUM.exists():
    pytest.skip(f"{bh.CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, log path, cache dir) of a running server; killed in a finally."""
    pytest.importorskip("msa_core.demo")
    work = tmp_path_factory.mktemp("browser")
    # The cache (quick demo build, vectors) persists in the git-ignored test-output/ so a re-run
    # reuses the demo; the results store is emptied so the sweep really runs every time.
    cache = CACHE
    cache.mkdir(parents=True, exist_ok=True)
    # The recent-experiments list goes too: a server reopens the last experiment by itself, and
    # this test starts from the first-start offer.
    for f in [*cache.glob("results.sqlite*"), cache / "recent_experiments.json"]:
        f.unlink(missing_ok=True)
    port = bh.free_port()
    log = work / "streamlit.log"
    proc = bh.start_server(ROOT, port, cache, log)
    try:
        bh.wait_healthy(proc, port)
        yield f"http://127.0.0.1:{port}", log, cache
    finally:
        bh.stop_server(proc)


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        b = bh.launch(p)
        try:
            yield b
        finally:
            b.close()


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(300_000)
    return context, page


def _shot(page, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return bh.screenshot(page, OUT / f"{name}.png")


def _answers_at(page, alpha: float, beta: float) -> tuple[list[str], list[str]]:
    bh.set_number(page, "w_alpha_num", alpha, wait=False)
    bh.wait_point(page, alpha, beta)
    bh.assert_no_exception(page)
    return bh.column_answers(page, "corrupted", N_QUESTIONS), bh.column_answers(page, "unlearned", N_QUESTIONS)


def test_end_to_end(server, browser):
    base_url, log, cache = server
    context, page = _new_page(browser)
    try:
        # A deep link as the very first request of a fresh server (Streamlit's legacy pages/
        # mode at that moment) goes through the entrypoint: sidebar and demo offer are there.
        page.goto(f"{base_url}/playground", timeout=120_000)
        page.locator(".st-key-w_offer_build").wait_for(timeout=120_000)
        page.locator(".st-key-w_exp_source").wait_for(timeout=60_000)
        bh.assert_no_exception(page)
        bh.load_demo(page, base_url)
        bh.assert_no_exception(page)
        # .streamlit/config.toml's toolbarMode = "minimal": no "Deploy" button in a local tool.
        assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
        _shot(page, "experiment")

        # Playground: α = 0 (the corrupted model itself), then a large α. Only the unlearned column moves.
        bh.set_number(page, "w_beta_num", 0)
        bh.open_page(page, "Playground")
        bh.set_toggle(page, "w_pg_diff", False)
        corrupted0, unlearned0 = _answers_at(page, 0.0, 0.0)
        assert unlearned0 == corrupted0, "at α = β = 0 the unlearned model is the corrupted one"
        corrupted5, unlearned5 = _answers_at(page, BIG_ALPHA, 0.0)
        assert corrupted5 == corrupted0, "moving α must not change the corrupted column"
        assert unlearned5 != unlearned0, "moving α from 0 to 5 must change at least one unlearned answer"
        assert "compose" in page.locator("body").inner_text()
        bh.set_number(page, "w_alpha_num", 1)
        bh.set_number(page, "w_beta_num", 1, wait=False)
        bh.wait_point(page, 1.0, 1.0)
        # The fast-tier metrics fragment: tiles with deltas against the corrupted model.
        bh.click(page, "w_pg_metrics")
        page.locator(".st-key-pg_metrics [data-testid='stMetric']").first.wait_for(timeout=600_000)
        bh.wait_idle(page)
        bh.assert_no_exception(page)
        _shot(page, "playground")

        # Trade-off: a small sweep; the charts fill in.
        bh.open_page(page, "Trade-off")
        page.locator(".st-key-w_to_alphas input").fill("0, 1, 2, 5")
        page.locator(".st-key-w_to_alphas input").press("Enter")
        page.locator(".st-key-w_to_betas input").fill("0, 1")
        page.locator(".st-key-w_to_betas input").press("Enter")
        bh.wait_idle(page)
        page.get_by_role("button", name="Run / resume sweep (4×2 = 8 points)").click()
        page.get_by_text("sweep finished").wait_for(timeout=600_000)
        bh.wait_idle(page, 600_000)
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 3
        bh.assert_no_exception(page)
        _shot(page, "tradeoff")

        for title in ("Probe", "Export", "Experiment"):
            bh.open_page(page, title)
            bh.assert_no_exception(page)
            if title == "Probe":
                bh.click(page, "w_probe_run")
                page.locator(".st-key-probe_summary").wait_for(timeout=300_000)
                bh.wait_idle(page)
                bh.assert_no_exception(page)
            _shot(page, title.lower())
        experiment = Path(page.locator(".st-key-exp_current code").inner_text().strip())
        _two_sessions(browser, base_url, experiment, cache)
    except (AssertionError, sync_api.Error):
        _shot(page, "failure")
        raise
    finally:
        context.close()
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")



def _squash(texts: list[str]) -> list[str]:
    """Whitespace as a browser shows it (runs collapsed, ends stripped)."""
    return [" ".join(t.split()) for t in texts]


def _independent_answers(experiment: Path, cache: Path, alpha: float, qs: list[str]) -> list[str]:
    """The same answers computed in this test process, through a separate engine (no server)."""
    import torch

    from msa_core.engine import Engine
    from msa_core.experiment import load_experiment
    from msa_core.generation import generate_answers

    torch.set_num_threads(1)
    engine = Engine.load(load_experiment(experiment), device="cpu", cache_dir=cache)
    with engine.session(alpha, 0.0) as model:
        return generate_answers(model, engine.tokenizer, qs, max_new_tokens=PLAYGROUND_MAX_NEW)


def _two_sessions(browser, base_url: str, experiment: Path, cache: Path) -> None:
    """Two contexts (two sessions of one server) moving α at the same time each see their own answers."""
    (ca, a), (cb, b) = _new_page(browser), _new_page(browser)
    try:
        for page in (a, b):
            bh.load_demo(page, base_url)
            bh.set_number(page, "w_beta_num", 0)
            bh.wait_idle(page)
            bh.open_page(page, "Playground")
            bh.set_toggle(page, "w_pg_diff", False)
        # Fire both moves before waiting for either, at points nobody computed yet, so the two
        # compose-and-generate runs overlap on the server's one working model.
        bh.set_number(a, "w_alpha_num", ALPHA_A, wait=False)
        bh.set_number(b, "w_alpha_num", ALPHA_B, wait=False)
        bh.wait_point(a, ALPHA_A, 0.0)
        bh.wait_point(b, ALPHA_B, 0.0)
        qs = bh.questions(a, N_QUESTIONS)
        assert qs == bh.questions(b, N_QUESTIONS)
        seen_a = bh.column_answers(a, "unlearned", N_QUESTIONS)
        seen_b = bh.column_answers(b, "unlearned", N_QUESTIONS)
        assert seen_a == _squash(_independent_answers(experiment, cache, ALPHA_A, qs))
        assert seen_b == _squash(_independent_answers(experiment, cache, ALPHA_B, qs))
        assert seen_a != seen_b
        # The other way round (now served from the per-question memo): still each session's own point.
        bh.set_number(a, "w_alpha_num", ALPHA_B, wait=False)
        bh.set_number(b, "w_alpha_num", ALPHA_A, wait=False)
        bh.wait_point(a, ALPHA_B, 0.0)
        bh.wait_point(b, ALPHA_A, 0.0)
        assert bh.column_answers(a, "unlearned", N_QUESTIONS) == seen_b
        assert bh.column_answers(b, "unlearned", N_QUESTIONS) == seen_a
        bh.assert_no_exception(a)
        bh.assert_no_exception(b)
    finally:
        ca.close()
        cb.close()


def test_guided_demo_compare_view_layers_and_glossary(server, browser):
    base_url, log, _cache = server
    context, page = _new_page(browser)
    shots = OUT / "walk"
    try:
        bh.load_demo(page, base_url)
        bh.click(page, "w_preset_corrupted")
        page.locator(".st-key-point_caption").get_by_text("α = 0.000").wait_for(timeout=120_000)
        bh.wait_idle(page)
        bh.open_page(page, "Guided demo")
        sentences = []
        for step in range(1, GUIDE_STEPS + 1):
            bh.guide_step(page, step, GUIDE_STEPS)
            if step == 5:  # the trade-off screen: compute its quick curve, then the scatter shows ★
                bh.click(page, "w_guide_curve")
                page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=600_000)
                bh.wait_idle(page, 600_000)
            bh.assert_no_exception(page)
            sentences.append(page.locator(".st-key-guide_sentence").inner_text().strip())
            bh.viewport_shots(page, shots, f"guided_{step}")
            if step < GUIDE_STEPS:
                bh.click(page, "w_guide_next")
        assert all(sentences) and len(set(sentences)) == GUIDE_STEPS
        # Leaving the first screen at α = 0 moved the point: the sidebar shows it.
        assert "α = 0.000" not in page.locator(".st-key-point_caption").inner_text()
        assert "α =" in sentences[1]

        # The compare view: pin the current point, move α; the pinned column stays beside the new one.
        bh.open_page(page, "Playground")
        caption = page.locator(".st-key-point_caption").inner_text()
        bh.click(page, "w_pin_add")
        bh.wait_idle(page)
        bh.set_number(page, "w_alpha_num", 4.5)
        bh.wait_point(page, 4.5, float(caption.split("β =")[1].strip()))
        assert page.locator(".st-key-ans_pin0_0").count() == 1
        bh.assert_no_exception(page)
        bh.viewport_shots(page, shots, "compare")

        bh.open_page(page, "Layers")
        page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(timeout=300_000)
        bh.assert_no_exception(page)
        bh.viewport_shots(page, shots, "layers")
        bh.screenshot(page, shots / "layers_full.png")

        bh.open_page(page, "Glossary")
        assert page.locator("h3").filter(has_text="Forget quality").count() == 1
        bh.assert_no_exception(page)
        bh.viewport_shots(page, shots, "glossary")
    except (AssertionError, sync_api.Error):
        _shot(page, "walk_failure")
        raise
    finally:
        context.close()
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")


def test_tradeoff_comparison_plot(server, browser, tmp_path):
    """The Trade-off page's comparison: the α/β grid, another method's named points (stored here
    as a synthetic series), the Pareto front and the best-point table; a screenshot of the plot."""
    from dataclasses import replace

    from msa_core.eval import ResultStore
    from msa_core.eval.results import EvalResult, MetricValue
    from msa_core.eval.store import method_model
    from msa_core.experiment import load_experiment
    from msa_core.fingerprints import experiment_fingerprint

    base_url, log, cache = server
    context, page = _new_page(browser)
    try:
        bh.load_demo(page, base_url)
        bh.open_page(page, "Trade-off")
        page.locator(".st-key-w_to_alphas input").fill("0, 2")
        page.locator(".st-key-w_to_alphas input").press("Enter")
        page.locator(".st-key-w_to_betas input").fill("0")
        page.locator(".st-key-w_to_betas input").press("Enter")
        bh.wait_idle(page)
        page.get_by_role("button", name="Run / resume sweep (2×1 = 2 points)").click()
        page.get_by_text("sweep finished").wait_for(timeout=600_000)
        bh.wait_idle(page, 600_000)
        # A synthetic method series beside the grid: the stored α = 2 point's metrics, moved.
        experiment = Path(page.locator(".st-key-exp_current code").inner_text().strip())
        fp = experiment_fingerprint(load_experiment(experiment))
        store = ResultStore(cache / "results.sqlite")
        grid = store.grid(fp, "fast")
        top = grid[grid["alpha"] == 2].iloc[-1]
        keys = [c for c in grid.columns if c not in ("alpha", "beta", "tier", "benchmark", "settings_key", "seconds",
                                                     "subset", "model") and top.notna().get(c, False)]
        for k, scale in ((1, 0.6), (2, 0.9)):
            metrics = {m: MetricValue(m, float(top[m]) * (scale if m.startswith("forget") else 1.1 - scale / 2))
                       for m in keys}
            res = EvalResult(0.0, 0.0, "fast", str(top["benchmark"]), fp, {"key": "browser-synthetic"}, 0.0, metrics)
            store.put(replace(res, model=method_model("synthetic-NPO", f"epoch-{k}")))
        bh.open_page(page, "Playground")  # away and back: the page reads the store afresh
        bh.open_page(page, "Trade-off")
        plot = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Forgetting vs utility")
        plot.first.wait_for(timeout=120_000)
        assert plot.first.get_by_text("synthetic-NPO").count() >= 1
        assert page.get_by_text("Best point per series at").count() == 1
        if load_experiment(experiment).clean_history:  # the demo's θ_clean candidates: the sidebar's picker
            assert page.locator(".st-key-w_choice_clean").count() == 1
        bh.assert_no_exception(page)
        plot.first.scroll_into_view_if_needed()
        shot = plot.first.screenshot(path=str(tmp_path / "tradeoff_comparison.png"))
        assert len(shot) > 10_000  # a PNG of the drawn chart, not an empty box
        bh.screenshot(page, tmp_path / "tradeoff_page.png")
    except (AssertionError, sync_api.Error):
        _shot(page, "comparison_failure")
        raise
    finally:
        context.close()
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")
