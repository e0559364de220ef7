"""msa_core.cli.output: one ``--json`` rule for every command, and the text progress bar."""

from __future__ import annotations

import argparse
import json

import pytest

from msa_core.cli import build_parser
from msa_core.cli.output import add_output_args, chatty, emit, note, text_progress

COMMANDS = ("demo", "vectors", "compose", "generate", "eval", "sweep", "results")


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_output_args(p)
    return p.parse_args(list(argv))


def test_json_dash_prints_only_json_on_stdout(capsys):
    emit("-", {"a": 1, "path": object.__name__}, lambda: print("human summary"))
    out = capsys.readouterr().out
    assert json.loads(out) == {"a": 1, "path": "object"} and "human" not in out


def test_json_file_is_written_and_the_summary_still_printed(tmp_path, capsys):
    target = tmp_path / "sub" / "out.json"
    emit(str(target), {"x": [1.5, None]}, lambda: print("human summary"))
    assert json.loads(target.read_text()) == {"x": [1.5, None]}
    assert capsys.readouterr().out == "human summary\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temp file left (atomic write)


def test_no_json_prints_the_summary_only(capsys):
    emit(None, {"x": 1}, lambda: print("human summary"))
    assert capsys.readouterr().out == "human summary\n"


def test_every_command_takes_json_file_and_quiet():
    parser = build_parser()
    needs = {
        "demo": [], "vectors": ["e.yaml"], "results": ["e.yaml"],
        "compose": ["e.yaml", "--alpha", "1", "--out", "o"], "generate": ["e.yaml", "--alpha", "1"],
        "eval": ["e.yaml", "--alpha", "1"], "sweep": ["e.yaml", "--alphas", "0,1"],
    }
    assert set(needs) == set(COMMANDS)
    for cmd, rest in needs.items():
        args = parser.parse_args([cmd, *rest, "--json", "-", "--quiet"])
        assert args.json == "-" and args.quiet is True, cmd
        assert parser.parse_args([cmd, *rest, "--json", "r.json"]).json == "r.json", cmd
        with pytest.raises(SystemExit):  # --json takes a value everywhere (no flag form)
            parser.parse_args([cmd, *rest, "--json"])


def test_stderr_notes_follow_the_rule(capsys):
    assert chatty(_args()) and chatty(_args("--json", "f.json"))
    assert not chatty(_args("--json", "-")) and not chatty(_args("--quiet"))
    note(_args("--json", "-"), "hidden")
    note(_args(), "shown")
    assert capsys.readouterr().err == "shown\n"


def test_text_progress_draws_on_stderr_and_can_be_off(capsys):
    bar = text_progress(True)
    bar(0.5, "halfway")
    bar(0.501, "too close to redraw")
    bar(1.0, "done")
    err = capsys.readouterr().err
    assert "50.0% halfway" in err and "too close" not in err and "100.0% done" in err and err.endswith("\n")
    text_progress(False)(0.5, "silent")
    assert capsys.readouterr().err == ""


def test_redirected_progress_prints_plain_lines_at_a_bounded_rate():
    """Into a log (not a terminal): no carriage returns, one line per LOG_LINE_SECONDS at most,
    plus the first and the last."""
    import io

    from msa_core.cli.output import LOG_LINE_SECONDS

    now = [0.0]
    log = io.StringIO()
    bar = text_progress(True, stream=log, tty=False, clock=lambda: now[0])
    for step in range(1, 100):  # 99 updates, one every LOG_LINE_SECONDS / 4
        bar(step / 100, f"step {step}")
        now[0] += LOG_LINE_SECONDS / 4
    bar(1.0, "done")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert lines[0] == "  1.0% step 1" and lines[-1] == "100.0% done"
    # one line per 4 updates (the first at step 1, then steps 5, 9, …, 97), plus the last
    assert lines[1:-1] == [f"{s:5.1f}% step {s}" for s in range(5, 100, 4)]
    terminal = io.StringIO()
    bar = text_progress(True, stream=terminal, tty=True)
    bar(0.5, "halfway")
    bar(1.0, "done")
    assert terminal.getvalue().startswith("\r[###############...............]  50.0% halfway")
    assert terminal.getvalue().count("\r") == 2 and terminal.getvalue().endswith("\n")


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, act.option_strings or act.dest) for name, command in [("msa", parser), *sub.choices.items()]
               for act in command._actions
               if not isinstance(act, (argparse._HelpAction, argparse._SubParsersAction)) and not act.help]
    assert missing == []
    for name in ("alpha", "beta", "seed", "json", "max_new_tokens", "sample"):
        act = next(a for a in sub.choices["generate"]._actions if a.dest == name)
        assert len(act.help) > 10, name


def test_the_library_never_imports_the_cli():
    """The CLI is a leaf: importing every library module leaves msa_core.cli unloaded."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    library = sorted(
        ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for f in (root / "msa_core").rglob("*.py")
        if "cli" not in f.relative_to(root / "msa_core").parts and f.name != "__main__.py"
    )
    assert "msa_core.eval.run" in library and "msa_core.engine" in library
    code = (
        "import importlib, sys\n"
        f"for name in {library!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('msa_core.cli')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
