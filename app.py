"""Transfer Learning Studio: `streamlit run app.py`.

The pages live in ``app_pages/``, not ``pages/``: Streamlit treats a ``pages/`` folder as a
legacy multipage app for a session that starts before ``st.navigation`` has run once, which
dropped the sidebar and the page titles on a freshly started server.
"""

import json
import os
import time

import streamlit as st

from ui.sidebar import render_sidebar
from ui.state import PAGES, confirm_workspace_link, workspace


def main() -> None:
    st.set_page_config(page_title="Transfer Learning Studio", page_icon="🧠", layout="wide")
    pages = [
        st.Page(PAGES["data"], title="Data", icon="📁", url_path="data", default=True),
        st.Page(PAGES["strategy"], title="Strategy", icon="🧭", url_path="strategy"),
        st.Page(PAGES["train"], title="Train", icon="🏋️", url_path="train"),
        st.Page(PAGES["runs"], title="Runs", icon="📊", url_path="runs"),
        st.Page(PAGES["result"], title="Result", icon="🔗", url_path="result"),
        st.Page(PAGES["predict"], title="Predict", icon="🔮", url_path="predict"),
    ]
    page = st.navigation(pages)
    # Root-level secrets (.streamlit/secrets.toml, Community Cloud's Secrets box) become environment
    # variables: the settings TL_HOSTED, TL_DATABASE_URL, TL_ARTIFACTS_URL... and cloud credentials,
    # which the training worker inherits. Streamlit loads them at start; this makes sure of it.
    st.secrets.load_if_toml_exists()
    started = time.perf_counter()
    try:
        confirm_workspace_link()  # hosted: a workspace key from a link is opened only on request
        workspace()  # hosted: this visitor's private workspace key, kept in the URL
        render_sidebar()
        page.run()
    finally:
        _log_render(page.title, time.perf_counter() - started)


def _log_render(title: str, seconds: float) -> None:
    """With ``TL_RENDER_LOG=path``, one JSON line per page run: how long the server took to render it."""
    path = os.environ.get("TL_RENDER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"page": title, "seconds": round(seconds, 4), "at": time.time()}) + "\n")


main()
