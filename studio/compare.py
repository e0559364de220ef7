"""The models a page shows side by side, and the points a session pinned to compare.

A :class:`Column` is one model the Playground and the Probe put a question to: the corrupted
model, the unlearned model at the current (α, β), each pinned point, the reference and the
clean model. Pinned points live in the session (:data:`studio.session.K_PINNED`, at most
:data:`MAX_PINNED`). :func:`metrics_table` lines up their stored fast-tier metrics, plus
the named points of other methods in the results store
(:meth:`msa_core.eval.store.ResultStore.method_grid`), which have metrics but no model here
(``Column.target`` is None for them, so a page can list them once models of other methods
can be loaded: give such a column a target and every page asks it like the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import streamlit as st

from msa_core.targets import Point, Side, Target
from studio import resources, session

if TYPE_CHECKING:
    import pandas as pd

    from msa_core.engine import Engine

# Answer cards need ~200 px to stay readable at 1400 px: corrupted + current + reference +
# clean + 3 pinned points is the most a row holds.
MAX_PINNED = 3
# Side-by-side metric columns that fit beside the model names at 1400 px.
MAX_METRIC_COLUMNS = 7


@dataclass(frozen=True)
class Column:
    """One model shown side by side: ``key`` is widget-key safe, ``target`` None for a
    metrics-only model (another method's named point), ``model`` its results-store model name."""

    key: str
    title: str
    target: Optional[Target]
    model: str = "composed"


def pinned() -> list[Point]:
    """The session's pinned points, in pinning order."""
    return list(session.get(session.K_PINNED) or [])


def pin(point: Point) -> None:
    """on_click: pin ``point`` (already pinned: nothing; full: the oldest pin makes room)."""
    pins = [p for p in pinned() if p != point]
    session.put(session.K_PINNED, (pins + [point])[-MAX_PINNED:])


def unpin(point: Point) -> None:
    """on_click: remove ``point`` from the pins."""
    session.put(session.K_PINNED, [p for p in pinned() if p != point])


def point_title(p: Point) -> str:
    return f"α={p.alpha:g}, β={p.beta:g}"


def columns(here: Point, *, reference: bool, clean: bool) -> list[Column]:
    """Corrupted, the current point, every pinned point other than it, then the side models asked for."""
    cols = [Column("corrupted", "Corrupted (α=β=0)", Side("corrupted"), "corrupted"),
            Column("unlearned", f"Unlearned ({point_title(here)})", here)]
    cols += [Column(f"pin{i}", f"Pinned {point_title(p)}", p) for i, p in enumerate(pinned()) if p != here]
    if reference:
        cols.append(Column("reference", "Reference (retain-only)", Side("reference"), "reference"))
    if clean:
        cols.append(Column("clean", "Clean (θ_clean)", Side("clean"), "clean"))
    return cols


def pin_controls(here: Point) -> None:
    """The row under the page title: pin the current point, unpin or clear the others."""
    row = st.container(horizontal=True, gap="small", vertical_alignment="center", key="pin_row")
    pins = pinned()
    row.button(f"Pin {point_title(here)}", icon=":material/push_pin:", key="w_pin_add", on_click=pin,
               args=(here,), disabled=here in pins, width="content",
               help=f"Keep this point as an extra column while you move the sliders (at most {MAX_PINNED}; "
               "the oldest pin makes room)")
    for i, p in enumerate(pins):
        row.button(f"✕ {point_title(p)}", key=f"w_pin_remove_{i}", on_click=unpin, args=(p,), width="content",
                   help="Remove this pinned column")
    if not pins:
        row.caption("Pin points to compare them side by side with the current one.")


def _clean(value: object) -> Optional[float]:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metrics_table(engine: Engine, cols: list[Column], *, benchmark: str, subset: int,
                  metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per column with its stored fast-tier ``metrics`` at this benchmark and subset, then
    one per named point of another method (any tier, said in its name); None where a value is
    not stored. Metrics no row has are left out; at most :data:`MAX_METRIC_COLUMNS` remain."""
    import pandas as pd

    rows = []
    side = None
    for col in cols:
        values: dict[str, Optional[float]] = {}
        if isinstance(col.target, Point) or col.model == "corrupted":
            at = col.target if isinstance(col.target, Point) else Point(0.0, 0.0)
            found = resources.stored_evaluation(engine, at, tier="fast", benchmark=benchmark, subset=subset)
            values = dict(found.flat()) if found is not None else {}
        elif col.model == "reference":
            if side is None:
                side = resources.results_grid(engine, "fast")
                side = side[(side["model"] == "reference") & (side["benchmark"] == benchmark)
                            & (side["subset"] == subset)]
            values = side.iloc[-1].to_dict() if not side.empty else {}
        if col.model == "clean":
            continue  # never evaluated by the app: no row rather than an empty one
        rows.append({"model": col.title, **{m: _clean(values.get(m)) for m in metrics}})
    named = resources.method_points(engine)
    for _, r in named.iterrows():
        rows.append({"model": f"{r['method']}: {r['point']} ({r['tier']} tier)",
                     **{m: _clean(r.get(m)) for m in metrics}})
    table = pd.DataFrame(rows, columns=["model", *metrics])
    keep = [m for m in metrics if table[m].notna().any()] or list(metrics[:1])
    return table[["model", *keep[:MAX_METRIC_COLUMNS]]]
