"""How far a run's test accuracy can be trusted, shown the same way on every page."""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_core.escape import markdown as plain
from tl_core.metrics import reliability


def show_flags(metrics: dict[str, Any]) -> None:
    """A warning for each reason not to trust the model (one class for everything, no better than
    guessing the largest class)."""
    for flag in reliability(metrics, macro_f1=False)["flags"]:
        st.warning(plain(flag), icon="⚠️")


def costly_time_note(store, dataset_name: str, workspace: str | None) -> str:
    """What one more comparison split costs: the last fine-tuning and from-scratch times on this dataset."""
    seconds = {}
    for run in store.list_runs(status="succeeded", limit=200, workspace=workspace):
        strategy = (run.get("config") or {}).get("train", {}).get("strategy")
        if run.get("name") == dataset_name and strategy in ("finetune", "scratch") and strategy not in seconds:
            seconds[strategy] = (run.get("metrics") or {}).get("seconds") or 0.0
    if len(seconds) < 2:
        return "Each split trains two-stage fine-tuning and from scratch once more."
    return (f"Each split trains two-stage fine-tuning (last time {seconds['finetune']:.0f} s) and from scratch "
            f"({seconds['scratch']:.0f} s) once more: about {sum(seconds.values()) / 60:.1f} min per split here.")
