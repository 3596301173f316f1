"""A progress listener that draws Streamlit progress bars; for work in the script thread only."""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_core.progress import NullProgress


class StreamlitProgress(NullProgress):
    """One ``st.progress`` bar per stage, removed when the stage ends.

    Streamlit calls fail from other threads, so this listener is only for work that runs in the
    script thread (decoding an upload); training reports through the store instead.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.bars: dict[str, Any] = {}
        self.totals: dict[str, int] = {}

    def on_stage_start(self, stage: str, total: int) -> None:
        self.totals[stage] = max(total, 1)
        self.bars[stage] = st.progress(0.0, text=f"{self.label}: 0 / {total}")

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            total = self.totals[stage]
            bar.progress(min(step / total, 1.0), text=f"{self.label}: {step} / {total}")

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.empty()
