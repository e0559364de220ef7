"""Regenerate the README's screenshots from the full demo in a real browser (not a test).

    python docs/make_screenshots.py [--cache cache] [--out docs/screenshots]

Starts ``streamlit run app.py`` on 127.0.0.1 with the full demo (built through the app's
first-start offer if it is not in the cache yet, ~5 minutes on 2 cores), drives Debian's
Chromium through Playwright (the same helpers as tests/test_browser.py), and saves:

- playground.png: α = 1, β = 0.5, the side-by-side answers and the fast-tier metric tiles;
- tradeoff.png: after a 5×3 sweep (α 0–2, β 0–1) on the Trade-off page;
- probe.png: the Probe page on its default question.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser test's server and Playwright helpers

import browser_helpers as bh  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "cache", help="MSA cache dir holding (or to hold) demo/")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args(argv)
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
                page.locator(".st-key-w_pg_metrics button").click()
                page.locator(".st-key-pg_metrics [data-testid='stMetric']").first.wait_for()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                bh.screenshot(page, args.out / "playground.png")

                bh.open_page(page, "Trade-off")
                for key, text in (("w_to_alphas", "0, 0.5, 1, 1.5, 2"), ("w_to_betas", "0, 0.5, 1")):
                    page.locator(f".st-key-{key} input").fill(text)
                    page.locator(f".st-key-{key} input").press("Enter")
                    bh.wait_idle(page)
                page.get_by_role("button", name="Run / resume sweep (5×3 = 15 points)").click()
                page.get_by_text("sweep finished").wait_for()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                bh.screenshot(page, args.out / "tradeoff.png")

                bh.open_page(page, "Probe")
                page.locator(".st-key-w_probe_run button").click()
                bh.wait_idle(page)
                bh.assert_no_exception(page)
                bh.screenshot(page, args.out / "probe.png")
            finally:
                browser.close()
    finally:
        bh.stop_server(proc)
    print(f"screenshots in {args.out} (server log: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
