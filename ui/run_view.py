"""The live view of a training run: stage and epoch progress, curves, time left, cancel."""

from __future__ import annotations

import time

import streamlit as st

from tl_core import charts
from tl_core.charts import run_label
from tl_core.progress import EPOCH_STAGES, STAGE_TITLES


# Failures that resuming can fix: the engine says "resume" in the errors of runs that stopped on
# their way (a killed or vanished training process, a full disk); a run could not be sent to the
# Ray cluster; an unexpected exception (often out of memory). A setting, the data or missing weights
# (every other error) fail the same way again.
RESUMABLE_ERRORS = ("resume", "Could not send the run to the Ray cluster", "Unexpected error")


def resumable(run: dict) -> bool:
    """Whether a Resume button can help this run: cancelled, or failed for a reason resuming fixes."""
    if run["status"] == "cancelled":
        return True
    error = (run.get("error") or "").lower()
    return run["status"] == "failed" and any(marker.lower() in error for marker in RESUMABLE_ERRORS)


def stage_fraction(info: dict | None) -> float:
    """How far one stage of a progress snapshot is, 0 to 1."""
    if not info or not info.get("total"):
        return 0.0
    return min((info.get("step") or 0) / info["total"], 1.0)


def _eta(info: dict, epoch: dict | None, early_stopping: bool = False) -> str:
    """Time left in a stage from its pace so far (the running epoch's batches included); for a stage
    of epochs (``early_stopping``), an upper bound."""
    step, total, started = info.get("step") or 0, info.get("total") or 0, info.get("started_at")
    done = step + (stage_fraction(epoch) if epoch and "finished_at" not in epoch else 0.0)
    if not started or done <= 0 or not total or step >= total:
        return ""
    left = (time.time() - started) / done * (total - done)
    return f" · about {left:.0f} s left" + (" (at most: early stopping may end it sooner)" if early_stopping else "")


def live_run(run: dict, store) -> None:
    """Progress of one running run, from its stored snapshot and epoch metrics."""
    progress = run.get("progress") or {}
    starts = [s["started_at"] for s in (progress.get("stages") or {}).values() if "started_at" in s]
    elapsed = time.time() - min(starts, default=time.time())
    st.markdown(f"**▶ {run_label(run)}** · running for {elapsed:.0f} s")
    stages = progress.get("stages") or {}
    for stage, info in stages.items():
        if stage.endswith(".epoch"):
            continue
        total = info.get("total") or 1
        step = info.get("step") or 0
        done = "finished_at" in info
        epoch = stages.get(f"{stage}.epoch")
        # Decoding counts files (an unreadable one is skipped and listed afterwards), the network images.
        unit = ("epoch" if stage in EPOCH_STAGES else "file" if stage == "decode"
                else "image" if stage in ("extract", "cache") else "step")
        text = (f"{STAGE_TITLES.get(stage, stage)} — {step}/{total} {unit}s"
                + ("" if done else _eta(info, epoch, early_stopping=unit == "epoch")))
        if done and unit == "epoch" and step < total:
            text += " (stopped early: validation loss stopped improving)"
        st.progress(1.0 if done else min(step / total, 1.0), text=text)
        if unit == "epoch" and not done and epoch and epoch.get("total"):
            st.progress(stage_fraction(epoch), text=f"epoch {step + 1}: batch {epoch.get('step') or 0}/{epoch['total']}")
        logs = info.get("logs") or {}
        if unit == "epoch" and logs:
            st.caption(
                " · ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            )
    if any(run.get("epochs", {}).values()):
        st.plotly_chart(charts.stage_curves(run["epochs"]), key=f"live_curves_{run['id']}")
    if st.button("Cancel this run", key=f"cancel_{run['id']}"):
        store.request_cancel(run["id"])
        st.toast("Cancel requested: it stops within an epoch.")
