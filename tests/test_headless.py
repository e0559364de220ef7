"""msa_core stays headless and the CLI stays a leaf: importing the library pulls in neither
streamlit nor msa_core.cli."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import msa_core

ROOT = Path(msa_core.__file__).parent


def _library_modules() -> list[str]:
    """Every msa_core module except the CLI package and ``python -m`` entry point."""
    names = [m.name for m in pkgutil.walk_packages(msa_core.__path__, "msa_core.")]
    return [n for n in names if not n.endswith("__main__") and n.split(".")[:2] != ["msa_core", "cli"]]


def _loaded_after_importing(modules: list[str], probe: str) -> bool:
    code = "import sys\n" + "".join(f"import {n}\n" for n in modules) + f"print({probe!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_msa_core_never_imports_streamlit():
    names = [m.name for m in pkgutil.walk_packages(msa_core.__path__, "msa_core.") if not m.name.endswith("__main__")]
    assert not _loaded_after_importing(names, "streamlit")


def test_no_streamlit_in_source():
    offenders = [str(p) for p in ROOT.rglob("*.py")
                 if "import streamlit" in p.read_text() or "from streamlit" in p.read_text()]
    assert offenders == []


def test_the_library_never_imports_the_cli():
    assert not _loaded_after_importing(_library_modules(), "msa_core.cli")
    leaf = ROOT / "cli"
    offenders = [str(p) for p in ROOT.rglob("*.py")
                 if leaf not in p.parents and p.name != "__main__.py"
                 and ("msa_core.cli" in p.read_text() or "from msa_core import cli" in p.read_text())]
    assert offenders == []
