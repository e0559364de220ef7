"""Helpers for the real-browser end-to-end test: a Streamlit server subprocess and Playwright waits.

The server runs ``streamlit run app.py`` on a free local port in its own process group
(killed as a group in ``stop_server``). The browser is Debian's Chromium driven through
Playwright's sync API; Playwright never downloads a browser here. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, port: int, cache_dir: Path, log_path: Path, *, quick: bool = True) -> subprocess.Popen:
    """``streamlit run app.py`` headless on 127.0.0.1:port with the quick (or full) demo and the given cache."""
    env = dict(os.environ, MSA_DEMO_QUICK="1" if quick else "0", MSA_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none"]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 90.0) -> None:
    """Block until the server answers /_stcore/health, or raise (with the process status)."""
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server's process group; kill it if it does not exit within 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def launch(playwright: Any) -> Any:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_idle(page: Any, timeout_ms: int = 300_000) -> None:
    """Wait until the script run of this session has finished."""
    page.wait_for_timeout(300)  # let a just-triggered rerun flip the state to running
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def assert_no_exception(page: Any) -> None:
    """No st.exception element and no traceback text anywhere on the page."""
    n = page.locator('[data-testid="stException"]').count()
    if n:
        first = page.locator("[data-testid=stException]").first.inner_text()
        raise AssertionError(f"{n} exception element(s): {first}")
    body = page.locator("body").inner_text()
    if "Traceback" in body:
        raise AssertionError("'Traceback' appears on the page")


def open_page(page: Any, title: str, timeout_ms: int = 300_000) -> None:
    """Click a page in the sidebar navigation and wait for its title and the end of its run."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.locator("h1").filter(has_text=title).first.wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def load_demo(page: Any, base_url: str, timeout_ms: int = 900_000) -> None:
    """Open the app and build (or reuse) the quick demo through the first-start offer; a session
    that reopens the last experiment by itself (studio/links.py) skips the offer."""
    page.goto(base_url, timeout=120_000)
    offer = page.locator(".st-key-w_offer_build button")
    ready = page.locator(".st-key-engine_info").get_by_text("Vectors:")
    deadline = time.monotonic() + 120
    while not ready.count() and not offer.count():
        if time.monotonic() > deadline:
            raise TimeoutError("neither the demo offer nor a loaded experiment appeared within 120 s")
        page.wait_for_timeout(500)
    if not ready.count():
        offer.click(timeout=120_000)
    # Poll rather than wait: a failed build or load shows an error at once instead of a 15-minute timeout.
    deadline = time.monotonic() + timeout_ms / 1000
    while not ready.count():
        failed = page.locator('[data-testid="stAlertContentError"], [data-testid="stException"]')
        if failed.count():
            raise AssertionError(f"the demo did not load: {failed.first.inner_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo did not load within {timeout_ms / 1000:.0f} s")
        page.wait_for_timeout(1000)
    wait_idle(page, timeout_ms)


def set_toggle(page: Any, key: str, on: bool) -> None:
    """Switch a keyed st.toggle on or off (no-op when it already is) and wait for the rerun."""
    if page.locator(f".st-key-{key} input").is_checked() != on:
        page.locator(f".st-key-{key} label").first.click()
        wait_idle(page)


def set_number(page: Any, key: str, value: float, *, wait: bool = True) -> None:
    """Type an exact value into a keyed st.number_input, submit it and (by default) wait
    until the sidebar reports the new point and the run has ended."""
    box = page.locator(f".st-key-{key} input")
    box.fill(f"{value:g}")
    box.press("Enter")
    if wait:
        symbol = "α" if "alpha" in key else "β"
        page.locator(".st-key-point_caption").get_by_text(f"{symbol} = {value:.3f}").wait_for(timeout=120_000)
        wait_idle(page)


def column_answers(page: Any, role: str, n: int) -> list[str]:
    """The answer texts of one Playground column for the first ``n`` questions ('' when empty).
    Switch the Playground's "What changed" marks off first: struck-out words are text too."""
    texts = [page.locator(f".st-key-ans_{role}_{i}_text").inner_text().strip() for i in range(n)]
    return ["" if t == "(empty answer)" else " ".join(t.split()) for t in texts]


def questions(page: Any, n: int) -> list[str]:
    """The Playground's first ``n`` questions, as shown."""
    texts = [page.locator(f".st-key-q_text_{i}").inner_text().strip() for i in range(n)]
    return [t.split(".", 1)[1].strip() for t in texts]


def wait_point(page: Any, alpha: float, beta: float, timeout_ms: int = 300_000) -> None:
    """Wait until the Playground's unlearned column shows answers at (α, β) and the run ended."""
    page.locator(".st-key-ans_unlearned_0").get_by_text(f"Unlearned (α={alpha:g}, β={beta:g})").wait_for(
        timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def screenshot(page: Any, path: Path, width: int = 1440, max_height: int = 7000) -> Path:
    """A screenshot of the whole app: Streamlit scrolls inside its main container, so the
    viewport is stretched to the content's height first (and restored afterwards)."""
    height = page.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stSidebarContent\"]']"
        ".map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight))"
    )
    old = page.viewport_size
    page.set_viewport_size({"width": width, "height": int(min(max(height + 40, 800), max_height))})
    page.wait_for_timeout(800)  # plotly charts re-layout on resize
    page.screenshot(path=str(path), full_page=True)
    if old:
        page.set_viewport_size(old)
    return path


# The two screen sizes every screenshot is checked at (STYLE.md §12): a laptop and a desktop.
VIEWPORTS = ((1400, 900), (1920, 1080))


def viewport_shots(page: Any, folder: Path, name: str) -> list[Path]:
    """What a person sees without scrolling, at each of :data:`VIEWPORTS`: ``<name>_<w>x<h>.png``
    (the viewport is restored afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    old = page.viewport_size
    out = []
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(800)  # plotly charts re-layout on resize
        path = folder / f"{name}_{width}x{height}.png"
        page.screenshot(path=str(path))
        out.append(path)
    if old:
        page.set_viewport_size(old)
        page.wait_for_timeout(300)
    return out


def guide_step(page: Any, step: int, total: int, timeout_ms: int = 300_000) -> None:
    """Wait until the Guided demo shows step ``step`` (1-based) of ``total`` and its run has ended."""
    page.get_by_text(f"Step {step} of {total}:").wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def click(page: Any, key: str) -> None:
    """Click the keyed st.button (the first match: a button with a tooltip renders a second one)."""
    page.locator(f".st-key-{key} button").first.click()
