"""Transfer Learning Studio: `streamlit run app.py`.

The pages live in ``app_pages/``, not ``pages/``: Streamlit treats a ``pages/`` folder as a
legacy multipage app for a session that starts before ``st.navigation`` has run once, which
dropped the sidebar and the page titles on a freshly started server.
"""

import streamlit as st

from ui.sidebar import render_sidebar
from ui.state import PAGES


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
    render_sidebar()
    page.run()


main()
