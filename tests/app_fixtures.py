"""Shared helpers of the AppTest test files (tests/test_app*.py): the tiny app experiment,
AppTest constructors and the sidebar/page drivers. The session fixtures ``app_env`` and
``tiny_yaml`` live in conftest.py; import ``_navigation_mode`` (autouse) into each AppTest file.

NOTE on ``pages/``: AppTest resets Streamlit's "v1 pages/ folder" flag before every run,
so from the second run on it would execute the page alone, without app.py. A real server
clears that flag for good at the first ``st.navigation`` call; the ``_navigation_mode``
fixture reproduces that. Remove it with studio.widgets.page_guard (same cause).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from tiny import make_checkpoints

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 300
MAX_NEW = 8  # tokens per answer in these tests: enough to tell answers apart, cheap on 2 cores

def _tofu_rows(names: list[str]) -> list[dict]:
    rows = []
    for n in names:
        for q, a, wrong in (
            ("Where was {n} born?", "In Velmora.", ["In Tarsk.", "In Oddi.", "In Brell."]),
            ("What genre does {n} write?", "Mystery novels.", ["Poetry.", "Satire.", "Fantasy."]),
            ("Who are the parents of {n}?", "A baker and a pilot.",
             ["Two judges.", "A chef and a nurse.", "Two miners."]),
        ):
            rows.append({"question": q.format(n=n), "answer": a, "paraphrased_answer": f"{n}: {a}",
                         "perturbed_answer": [f"{n}: {w}" for w in wrong],
                         "paraphrased_question": "Tell me: " + q.format(n=n)})
    return rows


def make_tiny_app_experiment(root: Path) -> Path:
    """Tiny checkpoints + a TOFU-format folder; returns the experiment YAML path."""
    make_checkpoints(root, seed=3)
    tofu = root / "tofu"
    tofu.mkdir(parents=True, exist_ok=True)
    forget, retain = _tofu_rows(["Ana Lenz", "Bo Kress"]), _tofu_rows(["Cy Marr", "Di Voss"])
    files = {
        "forget10_perturbed.json": forget,
        "forget10.json": [{"question": r["question"], "answer": r["answer"]} for r in forget],
        "retain_perturbed.json": retain,
        "holdout10.json": [{"question": r["question"], "answer": r["answer"]} for r in _tofu_rows(["Ed Holm"])],
        "world_facts_perturbed.json": [{"question": "What is the capital of France?", "answer": "Paris",
                                        "perturbed_answer": ["Rome", "Berlin", "Madrid"]}] * 3,
        "real_authors_perturbed.json": [{"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
                                         "perturbed_answer": ["Jane Austen", "Leo Tolstoy", "Homer"]}] * 3,
    }
    for name, rows in files.items():
        (tofu / name).write_text(json.dumps(rows), encoding="utf-8")
    muse = root / "muse"
    bios = [f"{n} was born in Velmora and writes mystery novels." for n in ("Ana Lenz", "Bo Kress", "Cy Marr")]
    qa = [{"question": r["question"], "answer": r["answer"]} for r in forget[:3]]
    muse_files = {
        "knowmem/forget_qa.json": qa, "knowmem/forget_qa_icl.json": qa[:2],
        "knowmem/retain_qa.json": [{"question": r["question"], "answer": r["answer"]} for r in retain[:3]],
        "knowmem/retain_qa_icl.json": qa[:2],
        "verbmem/forget.json": [{"prompt": b[:20], "gt": b[20:]} for b in bios],
        "privleak/forget.json": bios, "privleak/retain.json": bios[::-1],
        "privleak/holdout.json": [f"{n} lives in Tarsk and paints." for n in ("Ed Holm", "Fa Quill", "Gu Rhee")],
    }
    for name, rows in muse_files.items():
        (muse / name).parent.mkdir(parents=True, exist_ok=True)
        (muse / name).write_text(json.dumps(rows), encoding="utf-8")
    text = (root / "experiment.yaml").read_text(encoding="utf-8")
    text = text.replace("tofu: null", "tofu: tofu").replace("muse: null", "muse: muse")
    (root / "experiment.yaml").write_text(text, encoding="utf-8")
    return root / "experiment.yaml"


@pytest.fixture(autouse=True)
def _navigation_mode(monkeypatch):
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        PagesManager.uses_pages_directory = False
        original(self, *args, **kwargs)

    monkeypatch.setattr(PagesManager, "__init__", init)


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def new_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def submit_experiment(at: AppTest, path: Path) -> list[str]:
    """Type ``path`` into the sidebar's experiment-file box and load it; the sidebar errors shown."""
    at.sidebar.text_input(key="w_exp_path_input").set_value(str(path)).run()
    at.sidebar.button(key="w_exp_load").click().run()
    no_exceptions(at)
    return [e.value for e in at.sidebar.error]


def load_experiment(at: AppTest, path: Path) -> AppTest:
    """Use the sidebar picker to load ``path``."""
    at.run()
    at.sidebar.radio(key="w_exp_source").set_value("Experiment file").run()
    submit_experiment(at, path)
    assert not at.error, [e.value for e in at.error]
    return at


def set_alpha(at: AppTest, value: float) -> AppTest:
    at.sidebar.number_input(key="w_alpha_num").set_value(value).run()
    no_exceptions(at)
    return at


def playground(at: AppTest) -> AppTest:
    at.switch_page("pages/playground.py").run()
    no_exceptions(at)
    return at


def independent_answers(yaml_path: Path, alpha: float, beta: float, questions: list[str],
                        max_new_tokens: int = MAX_NEW) -> list[str]:
    """Greedy answers of θ_c − α(θ_f − θ_clean) + β(θ_r − θ_clean), built by hand from the tiny
    app experiment's files (no engine), for checking what a page shows."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from msa_core.generation import generate_answers

    root = yaml_path.parent
    sd = {r: load_file(str(root / r / "model.safetensors")) for r in ("clean", "corrupted", "forget", "retain")}
    merged = {k: sd["corrupted"][k] - alpha * (sd["forget"][k] - sd["clean"][k])
              + beta * (sd["retain"][k] - sd["clean"][k]) for k in sd["corrupted"]}
    model = LlamaForCausalLM.from_pretrained(root / "corrupted").eval()
    model.load_state_dict(merged, strict=False)
    tok = AutoTokenizer.from_pretrained(root / "corrupted")
    return generate_answers(model, tok, questions, max_new_tokens=max_new_tokens)
