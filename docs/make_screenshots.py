"""Regenerate the README's screenshots from the full demo in a real browser (not a test).

    python docs/make_screenshots.py [--cache cache] [--out docs/screenshots]

Starts ``streamlit run app.py`` on 127.0.0.1 with the full demo (built through the app's
first-start offer if it is not in the cache yet, ~5 minutes on 2 cores), drives Debian's
Chromium through Playwright (the same helpers as tests/test_browser.py), and saves:

- playground.png: α = 1, β = 0.5, the side-by-side answers and the fast-tier metric tiles;
- tradeoff.png: after a 5×3 sweep (α 0–2, β 0–1) on the Trade-off page;
- tradeoff_compare.png: that page's forgetting-vs-utility chart alone (the grid, the demo's
  other θ_clean choices and its NPO baseline's epochs, stored by the demo build);
- probe.png: the Probe page on its default question;
- compare.png: the Playground with α = 1, β = 0.5 pinned beside α = 2;
- layers.png: the Layers page at α = 2, β = 0.5;
- guided_1.png … guided_6.png: every screen of the Guided demo, started at α = 0 (its
  trade-off screen shows the 5×3 sweep above).

With ``--viewports`` each one is also saved as ``<name>_1400x900.png`` and
``<name>_1920x1080.png`` (what a person sees without scrolling), for checking the layout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser test's server and Playwright helpers

import browser_helpers as bh  # noqa: E402

GUIDE_STEPS = 6  # pages/guided.py's STEPS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="MSA cache dir holding (or to hold) demo/")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--viewports", action="store_true", help="also save 1400×900 and 1920×1080 viewport shots")
    args = ap.parse_args(argv)

    def shot(page: object, name: str) -> None:
        bh.screenshot(page, args.out / f"{name}.png")
        if args.viewports:
            bh.viewport_shots(page, args.out, name)

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = bh.free_port()
    log = Path(tempfile.mkdtemp(prefix="msa-shots-")) / "streamlit.log"
    proc = bh.start_server(ROOT, port, args.cache.resolve(), log, quick=False)
    try:
        bh.wait_healthy(proc, port)
        with sync_playwright() as p:
            browser = bh.launch(p)
            try:
                page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                page.set_default_timeout(600_000)
                bh.load_demo(page, f"http://127.0.0.1:{port}", timeout_ms=1_200_000)
                bh.set_number(page, "w_beta_num", 0.5)
                bh.set_number(page, "w_alpha_num", 1)
                bh.open_page(page, "Playground")
                bh.wait_point(page, 1.0, 0.5)
                # "Compute metrics" is disabled when every shown metric is already stored (a rerun)
                if page.locator(".st-key-w_pg_metrics button").first.is_enabled():
                    bh.click(page, "w_pg_metrics")
                page.locator(".st-key-pg_metrics [data-testid='stMetric']").first.wait_for()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                shot(page, "playground")

                bh.open_page(page, "Trade-off")
                for key, text in (("w_to_alphas", "0, 0.5, 1, 1.5, 2"), ("w_to_betas", "0, 0.5, 1")):
                    page.locator(f".st-key-{key} input").fill(text)
                    page.locator(f".st-key-{key} input").press("Enter")
                    bh.wait_idle(page)
                page.get_by_role("button", name="Run / resume sweep (5×3 = 15 points)").click()
                page.get_by_text("sweep finished").wait_for()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                shot(page, "tradeoff")
                # the comparison chart alone: the grid, the other θ_clean choices and the baseline
                plot = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Forgetting vs utility")
                plot.first.scroll_into_view_if_needed()
                plot.first.screenshot(path=str(args.out / "tradeoff_compare.png"))

                bh.open_page(page, "Probe")
                bh.click(page, "w_probe_run")
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                shot(page, "probe")

                bh.open_page(page, "Playground")
                bh.click(page, "w_pin_add")
                bh.wait_idle(page)
                bh.set_number(page, "w_alpha_num", 2)
                bh.wait_point(page, 2.0, 0.5)
                bh.assert_no_exception(page)
                shot(page, "compare")

                bh.open_page(page, "Layers")
                page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                shot(page, "layers")

                bh.click(page, "w_preset_corrupted")
                bh.wait_idle(page)
                bh.open_page(page, "Guided demo")
                for step in range(1, GUIDE_STEPS + 1):
                    bh.guide_step(page, step, GUIDE_STEPS)
                    bh.assert_no_exception(page)
                    shot(page, f"guided_{step}")
                    if step < GUIDE_STEPS:
                        bh.click(page, "w_guide_next")
            finally:
                browser.close()
    finally:
        bh.stop_server(proc)
    print(f"screenshots in {args.out} (server log: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
