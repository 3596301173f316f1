"""The sidebar every page shares: the current dataset and the job queue, refreshed live."""

from __future__ import annotations

import streamlit as st

from tl_core import ray_jobs
from tl_core.charts import run_label
from tl_core.escape import markdown as plain
from tl_core.jobs import ensure_worker, queue_snapshot, refresh_seconds
from ui.run_view import stage_fraction
from ui.state import ICONS, PAGES, current_dataset, get_store, hosted, workspace

REFRESH = (2, 2, 10)  # seconds between refreshes: a run of mine training, waiting, nothing of mine


def _queue(interval: float) -> None:
    store = get_store()
    snapshot = queue_snapshot(store, workspace())
    if refresh_seconds(snapshot, *REFRESH) != interval:
        st.rerun()  # work started or ended: redraw the page, which sets the new pace
    if snapshot["queued"] and not snapshot["worker_alive"]:
        ensure_worker(store)  # whichever page is open, queued work never waits for a dead worker
    st.markdown("**Job queue**")
    if not snapshot["running"] and not snapshot["queued"]:
        st.caption("Nothing of yours is training." if hosted() else "Nothing training.")
    others = snapshot["others_running"] + snapshot["others_queued"]
    if others:
        where = "on the Ray cluster" if ray_jobs.enabled() else "one at a time"
        st.caption(f"{others} run(s) of other visitors in the queue; runs train {where}.")
    for run in snapshot["running"]:
        progress = run.get("progress") or {}
        stage = progress.get("current")
        fraction = stage_fraction((progress.get("stages") or {}).get(stage))
        st.progress(fraction, text=f"▶ {run_label(run)} — {stage or 'starting'}")
    for position, run in enumerate(snapshot["queued"], start=1):
        st.caption(f"{position}. {run_label(run)} ({(run.get('progress') or {}).get('message') or 'waiting'})")


def render_sidebar() -> None:
    with st.sidebar:
        dataset = current_dataset()
        st.markdown("**Dataset**")
        if dataset:
            st.caption(f"{ICONS['data']} {plain(dataset['name'])}")
        else:
            st.caption("None loaded yet.")
            st.page_link(PAGES["data"], label="Load one", icon=ICONS["data"])
        # Refreshed every 2 s while this visitor has work queued or running, every 10 s otherwise:
        # many open sessions must not keep the server busy redrawing nothing.
        interval = refresh_seconds(queue_snapshot(get_store(), workspace()), *REFRESH)
        st.fragment(_queue, run_every=interval)(interval)
        if hosted():
            st.markdown("**Your private workspace**")
            st.caption("Only this link shows your datasets and runs: bookmark it, and keep it to yourself (anyone "
                       "with it can change them). To show a result, use its own share link: public and read-only.")
            base = (st.context.url or "").split("?")[0]
            st.code(f"{base}?ws={workspace()}", language=None)
