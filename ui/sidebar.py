"""The sidebar every page shares: the current dataset and the job queue, refreshed live."""

from __future__ import annotations

import streamlit as st

from tl_core.charts import run_label
from tl_core.jobs import ensure_worker, queue_snapshot
from ui.run_view import stage_fraction
from ui.state import PAGES, current_dataset, get_store


@st.fragment(run_every=2)
def _queue() -> None:
    store = get_store()
    snapshot = queue_snapshot(store)
    if snapshot["queued"] and not snapshot["worker_alive"]:
        ensure_worker(store)  # whichever page is open, queued work never waits for a dead worker
    st.markdown("**Job queue**")
    if not snapshot["running"] and not snapshot["queued"]:
        st.caption("Nothing training.")
    for run in snapshot["running"]:
        progress = run.get("progress") or {}
        stage = progress.get("current")
        fraction = stage_fraction((progress.get("stages") or {}).get(stage))
        st.progress(fraction, text=f"▶ {run_label(run)} — {stage or 'starting'}")
    for position, run in enumerate(snapshot["queued"], start=1):
        st.caption(f"{position}. {run_label(run)} (waiting)")


def render_sidebar() -> None:
    with st.sidebar:
        dataset = current_dataset()
        st.markdown("**Dataset**")
        if dataset:
            st.caption(f"📁 {dataset['name']}")
        else:
            st.caption("None loaded yet.")
            st.page_link(PAGES["data"], label="Load one", icon="📁")
        _queue()
