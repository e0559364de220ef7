"""The Streamlit glue of MSA Studio, between the pages and the headless ``msa_core``.

``session`` (every session-state key, the current point), ``resources`` (every
``st.cache_*`` wrapper and process-wide memo, the shared results store), ``widgets``
(sidebar, demo offer, engine panel, errors, metric tiles), ``labels`` (metric words and
number formats) and ``charts`` (Plotly figures). Besides ``app.py`` and ``pages/``, this
is the only package that imports streamlit; ``msa_core`` never imports it.
"""
