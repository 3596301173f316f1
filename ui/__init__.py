"""Streamlit-only helpers shared by the pages (the engine in tl_core never imports Streamlit)."""
