"""How far a run's test accuracy can be trusted, shown the same way on every page."""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_core.escape import markdown as plain
from tl_core.metrics import reliability


def interval_text(metrics: dict[str, Any]) -> str:
    """``95% CI 64.4-87.7% · 46 test images · largest class alone: 30.4%`` (no user text in it)."""
    facts = reliability(metrics)
    low, high = facts["test_accuracy_ci"]
    return (f"{facts['confidence']:.0%} CI {low:.1%}-{high:.1%} · {facts['n_test']} test images · "
            f"largest class alone: {facts['majority_baseline']:.1%}")


def show_flags(metrics: dict[str, Any]) -> None:
    """A warning for each reason not to trust the model (one class for everything, no better than
    guessing the largest class)."""
    for flag in reliability(metrics)["flags"]:
        st.warning(plain(flag), icon="⚠️")
