"""Every page's own address works on a cold server, and the header has no Deploy button."""

from __future__ import annotations

import re

import pytest

from e2e.conftest import _serve

pytestmark = pytest.mark.e2e


def test_deep_links_work_on_a_cold_server_in_chromium(browser, tmp_path):
    """A server's first visitor may arrive on any page's address; the Data page's too (it was the
    default page, which Streamlit serves at ``/`` only)."""
    server = _serve(tmp_path)
    url = next(server)["url"]
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, title in (("/train", "Train"), ("/data", "Data"), ("/runs", "Runs"), ("/", "Data"),
                            ("/strategy", "Strategy"), ("/predict", "Predict")):
            page.goto(url + path)
            page.get_by_role("heading", name=re.compile(title)).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # the modal comes with the page's first message
            assert page.get_by_text("Page not found").count() == 0, path
            assert page.get_by_role("button", name="Deploy").count() == 0
        page.close()
    finally:
        next(server, None)
