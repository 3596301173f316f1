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
from ui.state import ICONS, PAGES, confirm_workspace_link, workspace


def main() -> None:
    st.set_page_config(page_title="Transfer Learning Studio", page_icon="🧠", layout="wide")
    pages = [
        st.Page(PAGES["data"], title="Data", icon=ICONS["data"], url_path="data"),
        st.Page(PAGES["strategy"], title="Strategy", icon=ICONS["strategy"], url_path="strategy"),
        st.Page(PAGES["train"], title="Train", icon=ICONS["train"], url_path="train"),
        st.Page(PAGES["runs"], title="Runs", icon=ICONS["runs"], url_path="runs"),
        st.Page(PAGES["result"], title="Result", icon=ICONS["result"], url_path="result"),
        st.Page(PAGES["predict"], title="Predict", icon=ICONS["predict"], url_path="predict"),
    ]
    page = st.navigation(_with_root(pages))
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


def _with_root(pages: list) -> list:
    """The pages plus what the root URL shows: the Data page.

    Streamlit serves its default page at ``/`` only, so a default Data page made ``/data`` a
    "Page not found" (a bookmark, a link in the README). A hidden page is the default instead: ``/``
    shows the Data page through it and ``/data`` stays the Data page's own address.
    """
    # url_path "home" is never shown (the default page lives at "/"); it keeps this page's id
    # apart from the visible Data page's.
    return [st.Page(PAGES["data"], title="Data", icon=pages[0].icon, url_path="home", default=True,
                    visibility="hidden"), *pages]


def _log_render(title: str, seconds: float) -> None:
    """With ``TL_RENDER_LOG=path``, one JSON line per page run: how long the server took to render it."""
    path = os.environ.get("TL_RENDER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"page": title, "seconds": round(seconds, 4), "at": time.time()}) + "\n")


main()
