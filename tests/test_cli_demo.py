"""End to end on the quick demo: the CLI commands a new user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _msa(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msa_core", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_cli_on_quick_demo(quick_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("MSA_CACHE_DIR", str(tmp_path / "cache"))
    exp = str(quick_demo)
    # building again with the same settings reuses the finished build
    r = _msa("demo", "--quick", "--out", str(Path(exp).parent), "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["experiment"] == exp

    r = _msa("vectors", exp, "--json", "-")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    r = _msa("vectors", exp, "--json", "-")
    assert json.loads(r.stdout)["from_cache"] is True and first["from_cache"] is False

    r = _msa(
        "generate", exp, "--alpha", "2", "--beta", "0.5", "--prompt", "Hello?", "--max-new-tokens", "8", "--json", "-"
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["answers"][0]
    assert {"corrupted", "reference"} <= set(row)

    out = tmp_path / "unlearned"
    r = _msa("compose", exp, "--alpha", "1", "--beta", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "msa.json").is_file() and (out / "config.json").is_file()
    # stderr is a pipe here, as in a redirected log: plain progress lines, no carriage returns
    assert "\r" not in r.stderr and "100.0% engine ready\n" in r.stderr
    r = _msa("compose", exp, "--alpha", "1", "--beta", "1", "--out", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr

    r = _msa("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("demo", "vectors", "compose", "generate", "init"))
