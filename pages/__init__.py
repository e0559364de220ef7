"""The Streamlit pages of MSA Studio (UI only) plus their shared state/cache and drawing helpers."""
