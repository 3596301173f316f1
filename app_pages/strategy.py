"""Strategy: the decision matrix, where this dataset sits in it, and the recommendation."""

from __future__ import annotations

import math

import streamlit as st

from tl_core import charts
from tl_core.advisor import LARGE_MIN_PER_CLASS, recommend
from tl_core.charts import STRATEGY_LABELS
from tl_core.errors import TLCoreError
from ui.state import PAGES, require_dataset

st.title("🧭 Strategy")
loaded = require_dataset()
if loaded is None:
    st.stop()
dataset, report = loaded

domain = st.radio(
    "Do your images look like everyday photos (animals, objects, scenes)?",
    ["similar", "different"],
    format_func=lambda d: "Yes, similar to everyday photos" if d == "similar" else "No: a different domain (scans, drawings, satellite, microscopy...)",
    horizontal=True,
    key="domain",
)
try:
    rec = recommend(report["per_class"], domain)
except TLCoreError as err:
    st.error(str(err))
    st.stop()
st.session_state["recommendation"] = rec

# The point: x on a log scale of the smallest class, 1 to 1,000 images filling the "small" half
# and 1,000 to 1,000,000 the "large" half; y by domain.
smallest = max(rec.measurements["min_per_class"], 1)
x = min(max(math.log10(smallest) / math.log10(LARGE_MIN_PER_CLASS), 0.05), 1.95)
y = 1.4 if domain == "similar" else 0.4
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(charts.decision_matrix(rec.size, rec.domain, (x, y)), key="matrix")
with right:
    st.subheader(f"Recommended: {STRATEGY_LABELS[rec.strategy]}")
    st.markdown(f"**{rec.cell}** — {rec.size} data, {rec.domain} domain.")
    for reason in rec.reasons:
        st.markdown(f"- {reason}")
    st.caption(
        f"Data is 'large' from {LARGE_MIN_PER_CLASS} images in the smallest class. "
        "The choice stays yours: the Train page starts from this recommendation, and "
        "“Compare strategies” trains all of them on the same split."
    )
    st.page_link(PAGES["train"], label="Next: train", icon="🏋️")
