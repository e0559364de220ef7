"""The view in the address bar: a reload, a new tab or a shared link shows the same view.

Query parameters (:data:`PARAMS`): ``experiment`` (the experiment file's path), ``alpha`` and
``beta``, ``page`` (a page's name, e.g. ``playground``; see :func:`page_name`) and
``questions`` (the Playground's selection, ``<set>:<i>,<j>,…`` with item indices of that
set, e.g. ``forget:0,3,7``), ``pins``, the pinned comparison points (``α:β`` pairs joined
by ``,``, e.g. ``0.8:0.5,2:1``), and ``clean`` / ``ef`` / ``er``, the θ_clean candidate and the
forget/retain fine-tune epochs when they are not the experiment's default
(:func:`studio.session.choice_params`). :func:`restore` applies them once per browser session, before
the sidebar is drawn; in the first session of a server process, a URL without an
``experiment`` parameter reloads the most recently used experiment (the recent list of
:mod:`studio.resources`), so a restarted server comes back where it was. A value that cannot
be used becomes a warning naming the parameter, never a traceback. :func:`write` puts the
current view back into the URL on every run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import streamlit as st

from msa_core.experiment import DEFAULT_ALPHA_RANGE, DEFAULT_BETA_RANGE
from msa_core.targets import Point
from studio import compare, resources, session, widgets

if TYPE_CHECKING:
    from streamlit.navigation.page import StreamlitPage

log = logging.getLogger("msa.app")

PARAMS = ("experiment", "alpha", "beta", "page", "questions", "pins", *session.CHOICE_PARAMS)


def page_name(page: StreamlitPage) -> str:
    """A page's name in the URL: its URL path ('playground'), the default page's title in lower case."""
    return page.url_path or page.title.lower().replace(" ", "-")


def parse_coefficient(raw: str, name: str, rng: tuple[float, float]) -> float:
    """A finite α or β inside ``rng``; ValueError naming the parameter otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} is not a finite number")
    if not rng[0] <= value <= rng[1]:
        raise ValueError(f"{name}={value:g} is outside the experiment's range [{rng[0]:g}, {rng[1]:g}]")
    return value


def parse_questions(raw: str) -> tuple[str, list[int]]:
    """``'<set>:<i>,<j>'`` → (set name, indices); ValueError naming what is wrong."""
    name, sep, rest = raw.rpartition(":")
    if not sep or not name.strip():
        raise ValueError(f"questions={raw!r} is not '<set>:<i>,<j>,…' (e.g. 'forget:0,3')")
    try:
        indices = [int(x) for x in rest.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"questions={raw!r}: the indices after ':' must be whole numbers") from None
    if any(i < 0 for i in indices):
        raise ValueError(f"questions={raw!r}: indices cannot be negative")
    return name.strip(), list(dict.fromkeys(indices))


def parse_pins(raw: str, alpha_range: tuple[float, float], beta_range: tuple[float, float]) -> list[Point]:
    """``'α:β,α:β'`` → points inside the ranges; ValueError naming the first bad pair."""
    points = []
    for pair in (p for p in raw.split(",") if p.strip()):
        a, sep, b = pair.partition(":")
        if not sep:
            raise ValueError(f"pins: {pair!r} is not 'α:β' (e.g. '0.8:0.5')")
        points.append(Point(parse_coefficient(a, "pinned alpha", alpha_range),
                            parse_coefficient(b, "pinned beta", beta_range)))
    return points


def format_pins(points: Sequence[Point]) -> str:
    return ",".join(f"{p.alpha:.10g}:{p.beta:.10g}" for p in points)


def format_questions(set_name: str, indices: Sequence[int]) -> str:
    return f"{set_name}:{','.join(str(int(i)) for i in indices)}"


def _choose(path: str, warnings: list[str], what: str) -> Optional[tuple[tuple[float, float], tuple[float, float]]]:
    """Choose the experiment at ``path``; its (α, β) ranges, or None (and a warning) when unusable."""
    try:
        exp = resources.experiment(path)
    except widgets.CORE_ERRORS as exc:
        warnings.append(f"{what} {path!r} cannot be used: {widgets.error_text(exc)}")
        return None
    widgets.choose_experiment(path)
    return exp.alpha_range, exp.beta_range


def restore(pages: Sequence[StreamlitPage], current: StreamlitPage) -> None:
    """Apply the URL's view once per session (see the module docstring); may switch page."""
    if session.get(session.K_URL_READ):
        return
    session.put(session.K_URL_READ, True)
    params = {k: st.query_params.get(k) for k in PARAMS}
    warnings: list[str] = []
    ranges = None
    if params["experiment"]:
        ranges = _choose(params["experiment"], warnings, "URL parameter experiment=")
    elif not session.experiment_path():
        last = resources.experiment_after_restart()
        if last:
            ranges = _choose(last, [], "last experiment")
            log.info("reloaded the last experiment %s", last)
    alpha_rng, beta_rng = ranges or (DEFAULT_ALPHA_RANGE, DEFAULT_BETA_RANGE)
    coef: dict[str, float] = {}
    for name, rng in (("alpha", alpha_rng), ("beta", beta_rng)):
        if params[name] is not None:
            try:
                coef[name] = parse_coefficient(params[name], name, rng)
            except ValueError as exc:
                warnings.append(f"URL parameter {exc}; kept the current value")
    if coef:
        p = session.point()
        session.set_point(coef.get("alpha", p.alpha), coef.get("beta", p.beta))
    if params["questions"]:
        try:
            session.put(session.K_QUESTIONS, parse_questions(params["questions"]))
        except ValueError as exc:
            warnings.append(f"URL parameter {exc}")
    if params["pins"]:
        try:
            pins = parse_pins(params["pins"], alpha_rng, beta_rng)
        except ValueError as exc:
            warnings.append(f"URL parameter {exc}; no points pinned")
        else:
            for p in pins:
                compare.pin(p)
    try:
        session.request_choice_from_params({k: params[k] for k in session.CHOICE_PARAMS if params[k]})
    except ValueError as exc:
        warnings.append(f"{exc}; kept the experiment's default θ_clean and epochs")
    session.put(session.K_URL_WARNINGS, warnings)
    wanted = params["page"]
    if wanted and wanted != page_name(current):
        by_name = {page_name(p): p for p in pages}
        if wanted in by_name:
            st.switch_page(by_name[wanted])
        warnings.append(f"URL parameter page={wanted!r} names no page; pages: {', '.join(by_name)}")


def show_warnings() -> None:
    """The URL values that could not be used, once, at the top of the page."""
    for text in session.pop(session.K_URL_WARNINGS) or []:
        st.warning(text, icon=":material/link_off:")


def write(current: StreamlitPage) -> None:
    """Put the session's view into the URL (only when it changed)."""
    want: dict[str, str] = {}
    path = session.experiment_path()
    if path:
        p = session.point()
        want.update(experiment=path, alpha=f"{p.alpha:.10g}", beta=f"{p.beta:.10g}")
        engine = resources.loaded_engine(path)
        if engine is not None:
            want.update(session.choice_params(resources.current_choice(engine)))
    want["page"] = page_name(current)
    chosen = session.get(session.K_QUESTIONS)
    if chosen:
        want["questions"] = format_questions(*chosen)
    if path and compare.pinned():
        want["pins"] = format_pins(compare.pinned())
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def set_questions(choice: Optional[tuple[str, list[int]]]) -> None:
    """Record the Playground's question selection (None: typed prompts, not in the URL) in the
    session and the URL at once (the page runs after :func:`write`)."""
    session.put(session.K_QUESTIONS, choice)
    if choice:
        text = format_questions(*choice)
        if st.query_params.get("questions") != text:
            st.query_params["questions"] = text
    elif "questions" in st.query_params:
        del st.query_params["questions"]
