"""msa_core stays headless: importing every module pulls in no streamlit."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import msa_core


def test_msa_core_never_imports_streamlit():
    names = [m.name for m in pkgutil.walk_packages(msa_core.__path__, "msa_core.") if not m.name.endswith("__main__")]
    code = "import sys\n" + "".join(f"import {n}\n" for n in names) + "print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_no_streamlit_in_source():
    root = Path(msa_core.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "import streamlit" in p.read_text() or "from streamlit" in p.read_text()]
    assert offenders == []
