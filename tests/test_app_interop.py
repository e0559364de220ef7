# studio.interop: the "Import open-unlearning results" panel imports a run folder into the app's
# results store as a named point and reports it; a bad folder shows an error, not a traceback.
import json

from app_fixtures import _navigation_mode, load_experiment, new_app, no_exceptions  # noqa: F401
from streamlit.testing.v1 import AppTest


def _panel_script() -> None:
    from types import SimpleNamespace

    from studio.interop import import_panel

    # the panel reads only the engine's experiment fingerprint
    import_panel(SimpleNamespace(fingerprint="fp-interop"))  # type: ignore[arg-type]


def test_import_panel_imports_a_folder_and_reports_it(app_env, tmp_path):
    from msa_core.eval.store import ResultStore

    run = tmp_path / "tofu_NPO" / "evals"
    run.mkdir(parents=True)
    (run / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.3, "model_utility": 0.4}))
    at = AppTest.from_function(_panel_script, default_timeout=60).run()
    assert not at.exception
    at.text_input(key="interop_folder").input(str(tmp_path / "nowhere")).run()
    at.button(key="interop_import").click().run()
    assert not at.exception and any("does not exist" in e.value for e in at.error)
    at.text_input(key="interop_folder").input(str(tmp_path / "tofu_NPO")).run()
    at.text_input(key="interop_method").input("NPO").run()
    at.button(key="interop_import").click().run()
    assert not at.exception and not at.error
    assert any("method:NPO/tofu_NPO" in s.value for s in at.success)
    grid = ResultStore(app_env / "results.sqlite").method_grid("fp-interop")
    assert list(grid["method"]) == ["NPO"] and list(grid["forget_quality"]) == [0.3]
