"""Glossary page: every metric's definition, better direction, ideal value and source paper.

Needs no experiment. Each entry has an anchor named after the metric (``glossary#forget_quality``),
which every metric label's tooltip links to (:func:`studio.labels.metric_help`). The entries
come from :mod:`studio.glossary` (definitions from METRIC_INFO).
"""

from __future__ import annotations

import streamlit as st

from studio import glossary, labels, widgets

widgets.page_guard()
st.title(":material/menu_book: Glossary")
st.caption("What each number in MSA Studio means, which way is better, and the paper it comes from. "
           "Every metric label's tooltip links here.")

query = st.text_input("Filter", key="w_gloss_filter", placeholder="e.g. truth ratio, MUSE, ROUGE",
                      label_visibility="collapsed").strip().lower()
all_entries = glossary.entries()
shown = [e for e in all_entries
         if not query or any(query in text.lower() for text in (e.name, e.label, e.definition, e.where))]
if not shown:
    st.info(f"No entry matches “{query}”.")

groups = (("TOFU metrics", lambda e: e.where.startswith("TOFU")),
          ("MUSE metrics", lambda e: e.where.startswith("MUSE")),
          ("Layer view", lambda e: e in glossary.LAYER_TERMS))
for title, belongs in groups:
    members = [e for e in shown if belongs(e)]
    if not members:
        continue
    st.header(title, anchor=False, divider="gray")
    # Two entries side by side: 29 entries stay a few screens long at 1400 px.
    cols = st.columns(2)
    for k, entry in enumerate(members):
        with cols[k % 2].container(border=True, key=f"gloss_{entry.name}"):
            st.subheader(entry.label, anchor=entry.name)
            st.markdown(f"{labels.md_escape(entry.definition)}\n\n"
                        f"**Better:** {entry.better} · **Ideal:** {entry.ideal}  \n"
                        f"**Computed by:** {entry.where} · name `{entry.name}`  \n"
                        f"**Source:** [{entry.reference.text}]({entry.reference.url})")
