"""Strategy: measure data size and domain similarity, place the dataset in the matrix, recommend."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import charts
from tl_core.advisor import (
    ADVICE_TIME,
    BENCH,
    LARGE_MIN_PER_CLASS,
    PART_WEIGHTS,
    SCRATCH_MIN_PER_CLASS,
    SAMPLE_SIZE,
    SIMILAR_MIN,
    anchors_sentence,
    bench_sentence,
    recommend,
)
from tl_core.backbones import BACKBONES
from tl_core.config import STRATEGY_LABELS, TrainConfig
from tl_core.errors import TLCoreError
from tl_core.escape import markdown as plain
from tl_core.export import readable_settings
from ui.advice import as_recommendation, cached_advice, measure, weights_on_disk
from ui.state import ICONS, PAGES, dataset_stamp, get_store, missing_weights, require_dataset

st.title(f"{ICONS['strategy']} Strategy")
loaded = require_dataset()
if loaded is None:
    st.stop()
dataset, report = loaded
store = get_store()
stamp = dataset_stamp(Path(dataset["path"]))

backbone = st.selectbox("Measure with backbone", list(BACKBONES), index=list(BACKBONES).index("mobilenet"),
                        format_func=lambda b: BACKBONES[b].title, key="advice_backbone")
advice = cached_advice(store, dataset["path"], stamp, backbone)
missing = missing_weights(backbone) if advice is None else None
if missing:  # measuring runs the pretrained network: say how to get it instead of offering a button that fails
    st.warning(missing, icon=":material/cloud_off:")
elif advice is None:
    automatic = weights_on_disk(backbone)
    slot = st.empty()
    clicked = slot.button("Measure domain similarity", type="primary",
                          help=f"About {ADVICE_TIME}: a few hundred of your images through the pretrained network.")
    if automatic or clicked:
        slot.empty()
        with st.spinner(f"Measuring a sample of your images with {BACKBONES[backbone].title}..."):
            advice = measure(store, dataset["path"], stamp, backbone)
        if "error" in advice:
            # Without weights, the engine's message ends in "train with weights 'none'": no advice for
            # someone who came for transfer learning. The page says how to get the weights instead.
            st.warning(missing_weights(backbone) or f"Could not measure domain similarity: {plain(advice['error'])}",
                       icon=":material/cloud_off:")
            advice = None

if advice is not None:
    rec = as_recommendation(advice)
    similarity = advice["similarity"]
else:
    st.caption("Not measured yet: answer instead.")
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
        st.error(plain(err))
        st.stop()
    similarity = 0.85 if domain == "similar" else 0.35
st.session_state["recommendation"] = rec

# The point: x on a log scale of the smallest class (1 to LARGE_MIN_PER_CLASS images fill the "small"
# half, from there to its square the "large" half); y the similarity, SIMILAR_MIN on the row boundary.
smallest = max(rec.measurements["min_per_class"], 1)
x = min(max(math.log10(smallest) / math.log10(LARGE_MIN_PER_CLASS), 0.05), 1.95)
y = similarity / SIMILAR_MIN if similarity < SIMILAR_MIN else 1 + (similarity - SIMILAR_MIN) / (1 - SIMILAR_MIN)
y = min(max(y, 0.05), 1.95)
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(charts.decision_matrix(rec.size, rec.domain, (x, y), measured=advice is not None), key="matrix")
with right:
    st.subheader(f"Recommended: {STRATEGY_LABELS[rec.strategy]}")
    if advice is None:
        st.caption("From your answer, not measured: " + ("measuring your images needs the ImageNet weights (above)."
                   if missing else "measure domain similarity (above) to place your data by its images."))
    st.markdown(f"**{rec.cell}** — {rec.size} data, {rec.domain} domain.")
    for reason in rec.reasons:
        st.markdown(f"- {reason}")
    settings = readable_settings({**dataclasses.asdict(TrainConfig()), **rec.settings, "strategy": rec.strategy})
    st.markdown("Settings: " + plain(" · ".join(f"{k}: {v}" for k, v in settings.items()
                                                if k not in ("Strategy", "Seed"))))
    st.page_link(PAGES["train"], label="Next: train with these settings", icon=ICONS["train"])

if advice is not None:
    st.subheader("Measurements")
    cols = st.columns(5)
    cols[0].metric("Smallest class", advice["min_per_class"], help=f"'Large' from {LARGE_MIN_PER_CLASS} images per class.")
    cols[1].metric("Similarity to ImageNet", f"{similarity:.2f}", help=f"'Similar' from {SIMILAR_MIN}.")
    titles = {"statistics": "Statistics", "recognition": "Recognition", "transferability": "Transferability"}
    helps = {
        "statistics": "Activation statistics: exp(-KL) between your images' activation statistics and the ImageNet statistics each BatchNorm layer stores.",
        "recognition": "ImageNet recognition: mean of the ImageNet classifier's top-1 probability and of 1 - its normalised prediction entropy.",
        "transferability": "Share of your labels' variance a linear model on the features explains (from LogME's evidence maximisation).",
    }
    for col, (part, value) in zip(cols[2:], advice["similarity_parts"].items()):
        col.metric(f"{titles[part]} ×{PART_WEIGHTS[part]}", "n/a" if value is None else f"{value:.2f}", help=helps[part])
    m = advice["measurements"]
    raw = [f"sample of {m['sample']} images", f"LogME {m['logme']:.3f}"]
    if "imagenet_top1" in m:
        raw += [f"ImageNet top-1 probability {m['imagenet_top1']:.2f}", f"prediction entropy {m['imagenet_entropy']:.2f}"]
    if "bn_divergence" in m:
        raw.append(f"activation-statistics divergence {m['bn_divergence']:.2f} nats")
    st.caption(" · ".join(raw) + f" · measured in {advice['seconds']:.0f} s")
    c1, c2 = st.columns(2)
    with c1:
        accuracy = advice.get("layer_accuracy") or {}
        layers = pd.DataFrame([{"features from": "last layer" if k == "0" else f"{k} blocks below the top", "LogME": v,
                                "cross-validated accuracy": accuracy.get(k)}
                               for k, v in advice["layers"].items()])
        st.markdown("**Which layer's features fit your labels** (LogME ranks them, higher is better; a softmax "
                    "head cross-validated on the sample settles the best against the last layer)")
        st.caption("Measured on the pictures as training will see them (its size and resize). The similarity's "
                   "LogME above is measured on pictures stretched to the backbone's square, as its anchors were, "
                   "so the last layer's two figures can differ.")
        st.dataframe(layers, hide_index=True, width="stretch", placeholder="—", column_config={
            "cross-validated accuracy": st.column_config.NumberColumn(
                format="%.3f", help="Measured for the last layer and LogME's best earlier layer; '—': not needed")})
    with c2:
        ranking = pd.DataFrame([{"backbone": r["title"], "LogME": r["logme"]} for r in advice["ranking"]])
        st.markdown("**Backbones ranked by transferability** (weights on disk)")
        st.dataframe(ranking, hide_index=True, width="stretch")
        if len(advice["ranking"]) == 1:
            st.caption("Only this backbone's weights are on disk; put others in TL_WEIGHTS_DIR to rank them.")
    if st.button("Measure again"):
        measure(store, dataset["path"], stamp, backbone)
        st.rerun()

with st.expander("How the advisor decides"):
    st.markdown(
        f"""
- **Data size**: images in the smallest class. *Large* from **{LARGE_MIN_PER_CLASS:,}**: retraining deep
  layers needs on the order of a thousand images per class (Yosinski et al. 2014 fine-tuned with about
  1,300; Kornblith et al. 2019 find fine-tuning's lead over frozen features shrinks as data per class
  falls to the hundreds; the CS231n notes and the Keras guide call a few hundred per class small).
  Our own runs on a different domain (Fashion-MNIST) found no size where retraining pays: frozen
  features from an earlier block were best at {BENCH['small']['per_class']:,} per class
  ({BENCH['small']['earlier_features']:.3f}) and at {BENCH['large']['per_class']:,} per class
  ({BENCH['large']['earlier_features']:.3f}) (README, *The strategy advisor*).
- **Domain similarity** to ImageNet, from a sample of up to {SAMPLE_SIZE} of your images, in [0, 1]: the
  weighted mean of *activation statistics* (how close your images' statistics inside the network are
  to the ImageNet statistics its BatchNorm layers store; weight {PART_WEIGHTS['statistics']}), *ImageNet recognition* (how
  confidently the ImageNet classifier names your images; {PART_WEIGHTS['recognition']}) and *transferability* (how much of your
  labels a linear model on the features explains, from LogME, You et al. 2021; {PART_WEIGHTS['transferability']}). *Similar* from
  **{SIMILAR_MIN}**; measured anchors: {anchors_sentence()}.
- **Different domain**: features from earlier blocks are compared with the last layer's (LogME, at
  the backbone's own input size here; `python -m tl_core advise --image-size N` compares them at the
  size you will train at) and the better one is recommended. Training **from scratch** is
  recommended only from **{SCRATCH_MIN_PER_CLASS:,}** images per class (He et al. 2019: random
  initialisation needs that much data, and long schedules, to catch up); {bench_sentence()}.
"""
    )
