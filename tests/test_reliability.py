"""RELIABILITY.md stays true: every case names a test that exists, and the counts at its top
are the counts of its rows. Also the defaults no other module's tests own: the server binds
to loopback, and checkpoint code is never imported unless an experiment allows it."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections import Counter
from pathlib import Path

from msa_core.checkpoints import load_model

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "RELIABILITY.md"
OUTCOMES = ("clear error", "correct")
ROW = re.compile(r"^\|\s*(?P<id>[A-Z]?\d+[a-z]?)\s*\|(?P<case>[^|]+)\|\s*(?P<outcome>[^|]+?)\s*\|(?P<rest>.*)\|\s*$")
TEST_REF = re.compile(r"`(tests/test_[\w]+\.py)::(test_\w+)`")


def _rows() -> list[dict[str, str]]:
    rows = [m.groupdict() for line in TABLE.read_text(encoding="utf-8").splitlines() if (m := ROW.match(line))]
    if not rows:
        raise ValueError(f"{TABLE}: no table rows found")
    return rows


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_case_ends_as_a_clear_error_or_correct_and_names_existing_tests():
    seen: set[str] = set()
    for row in _rows():
        assert row["id"] not in seen, f"case {row['id']} appears twice"
        seen.add(row["id"])
        assert row["outcome"] in OUTCOMES, f"case {row['id']}: outcome {row['outcome']!r}"
        refs = TEST_REF.findall(row["rest"])
        assert refs, f"case {row['id']} names no test"
        for file, name in refs:
            assert name in _test_names(ROOT / file), f"case {row['id']}: {file}::{name} does not exist"


def test_the_counts_at_the_top_are_the_counts_of_the_rows():
    text = TABLE.read_text(encoding="utf-8")
    counts = Counter(row["outcome"] for row in _rows())
    m = re.search(r"\*\*(\d+) cases\*\*: (\d+) clear error, (\d+) correct; (\d+) data lost, (\d+) silently wrong, "
                  r"(\d+) tracebacks", text)
    assert m, "the counts line is missing from RELIABILITY.md"
    total, clear, correct, lost, wrong, tracebacks = (int(g) for g in m.groups())
    assert (total, clear, correct) == (sum(counts.values()), counts["clear error"], counts["correct"])
    assert (lost, wrong, tracebacks) == (0, 0, 0)


def test_the_server_binds_to_loopback_and_hides_the_deploy_button():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["serverAddress"] == "127.0.0.1"
    assert config["client"]["toolbarMode"] == "minimal"


def test_checkpoint_code_is_never_imported_unless_the_experiment_allows_it(tiny_experiment, tmp_path, monkeypatch):
    # A checkpoint folder that ships its own model code (auto_map) and would leave a mark if imported.
    folder = Path(tiny_experiment.checkpoints.corrupted)
    marker = tmp_path / "remote-code-ran"
    (folder / "evil_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaForCausalLM as EvilModel\n",
        encoding="utf-8",
    )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        load_model(folder)
    except ValueError as exc:  # refusing the folder is as good as ignoring its code
        assert str(folder) in str(exc)
    assert not marker.exists(), "the checkpoint's own Python code ran without trust_remote_code"
    assert tiny_experiment.trust_remote_code is False


def test_the_table_holds_every_numbered_case_of_the_reliability_issue():
    ids = {row["id"].rstrip("abcdefgh") for row in _rows()}  # 10a–10d are the parts of case 10
    missing = sorted({str(i) for i in range(1, 20)} - ids, key=int)
    assert not missing, f"cases {missing} are not in RELIABILITY.md"
