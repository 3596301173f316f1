"""Train: settings from the recommendation, background jobs, live progress, cancel."""

from __future__ import annotations

import dataclasses
import uuid

import streamlit as st

from tl_core import charts, comparison, quotas
from tl_core.backbones import BACKBONES
from tl_core.charts import run_label
from tl_core.config import (
    COMPARE_COSTLY_SPLITS,
    COMPARE_FEATURE_SPLITS,
    COMPARE_MAX_SPLITS,
    FEATURE_CUT_AUTO,
    HEAD_NAMES,
    HEADS,
    PRECISIONS,
    RESIZE_MODES,
    STRATEGIES,
    STRATEGY_LABELS,
    DataConfig,
    TrainConfig,
)
from tl_core.errors import TLCoreError
from tl_core.hardware import describe_machine
from tl_core.jobs import ensure_worker, queue_snapshot, refresh_seconds, resume, submit
from tl_core.metrics import interval_text, reliability
from tl_core.progress import time_breakdown
from ui.reliability import costly_time_note, plain
from ui.run_view import live_run, resumable
from ui.state import ICONS, PAGES, get_store, hosted, missing_weights, require_dataset, workspace

st.title(f"{ICONS['train']} Train")
store = get_store()
key = workspace()


REFRESH = (1, 3, 10)  # seconds between refreshes: a run of mine training, waiting, nothing of mine


def live_panel(interval: float) -> None:
    snapshot = queue_snapshot(store, key)
    if refresh_seconds(snapshot, *REFRESH) != interval:
        st.rerun()  # a run started or ended: redraw the page, which sets the new pace
    if snapshot["running"] or snapshot["queued"]:
        ensure_worker(store)  # restarts a worker that died (its run is then marked failed)
    for run in snapshot["running"]:
        live_run(store.get_run(run["id"]), store)
    ahead = snapshot["others_running"] + snapshot["others_queued"]
    if ahead and (snapshot["queued"] or snapshot["running"]):
        st.caption(f"Also in the queue: {ahead} run(s) of other visitors. Runs train one at a time, in order.")
    if snapshot["queued"]:
        st.markdown("**Waiting in the queue** (one run trains at a time)")
        for position, run in enumerate(snapshot["queued"], start=1):
            left, right = st.columns([5, 1])
            left.caption(f"{position}. {run_label(run)}")
            if right.button("Remove", key=f"dequeue_{run['id']}"):
                store.request_cancel(run["id"])
                st.rerun(scope="fragment")
    finished = [r for r in store.list_runs(limit=8, workspace=key) if r["status"] in ("succeeded", "failed", "cancelled")]
    if finished:
        st.markdown("**Latest finished runs**")
        for run in finished[:5]:
            metrics = run.get("metrics") or {}
            left, right = st.columns([5, 1])
            if run["status"] == "succeeded":
                flags = reliability(metrics, macro_f1=False)["flags"]
                flagged = " ⚠️ " + plain(" ".join(flags)) if flags else ""
                left.markdown(f"✅ {run_label(run)} on {plain(run.get('name') or 'a dataset')} — test accuracy "
                              f"**{metrics['test_accuracy']:.1%}** ({interval_text(metrics)}) in "
                              f"{metrics['seconds']:.0f} s{flagged}")
            else:
                left.markdown(f"{'⛔' if run['status'] == 'failed' else '⏹'} {run_label(run)} — {run['status']}: "
                              f"{plain(run.get('error') or '')}")
            with right:
                st.page_link(PAGES["result"], label="Open", query_params={"run": run["id"]})
                if resumable(run) and st.button("Resume", key=f"resume_{run['id']}",
                                                               help="Go on from the last completed epoch"):
                    try:
                        resume(store, run["id"])
                    except TLCoreError as err:  # already queued again (another tab, a double click)
                        st.toast(plain(err))
                    st.rerun(scope="fragment")
    latest = next((r for r in finished if r["status"] == "succeeded"), None)
    if latest is not None and (parts := time_breakdown(latest)):
        with st.expander(f"Where the time went: {run_label(latest)}"):
            st.plotly_chart(charts.time_breakdown(parts), key=f"time_{latest['id']}")


def plan_summary(planned) -> str:
    """``14 runs: Feature extractor (softmax) x 5 splits, ...`` for the runs of a comparison."""
    counts: dict[str, int] = {}
    for variant, _ in planned:
        name = comparison.strategy_label({"strategy": variant.strategy, "head": variant.head,
                                          "start_from_probe": variant.start_from_probe})
        counts[name] = counts.get(name, 0) + 1
    return f"{len(planned)} runs: " + ", ".join(f"{name} x {n} split{'s' if n > 1 else ''}" for name, n in counts.items())


# First, so a reloaded page shows the running jobs even before a dataset is chosen; every second
# while one of this visitor's runs trains, less often while they wait or when nothing runs.
interval = refresh_seconds(queue_snapshot(store, key), *REFRESH)
st.fragment(live_panel, run_every=interval)(interval)
st.divider()
loaded = require_dataset()
if loaded is None:
    st.stop()
dataset, report = loaded


@st.cache_resource
def hardware() -> str:
    return describe_machine()


rec = st.session_state.get("recommendation")
defaults = dataclasses.replace(TrainConfig(), **{k: v for k, v in (rec.settings if rec else {}).items()})
st.caption(
    f"Dataset: **{plain(dataset['name'])}** ({report['n_images']} images, {report['n_classes']} classes) · "
    f"trains on **{hardware()}** in a background process: reload or close the tab, it goes on."
    + (f" · recommended: **{STRATEGY_LABELS[rec.strategy]}**" if rec else "")
)

weights_slot = st.empty()  # filled once the form's settings are known: the weights they need
with st.form("settings", enter_to_submit=False):  # Enter in a field commits it, never queues a run
    c1, c2, c3 = st.columns(3)
    backbone = c1.selectbox("Backbone", list(BACKBONES), index=list(BACKBONES).index(defaults.backbone),
                            format_func=lambda b: BACKBONES[b].title)
    strategy = c2.selectbox("Strategy", STRATEGIES, index=STRATEGIES.index(defaults.strategy),
                            format_func=STRATEGY_LABELS.get)
    head = c3.selectbox("Head (feature extractor)", HEADS, index=HEADS.index(defaults.head),
                        format_func=HEAD_NAMES.get)
    c1, c2, c3, c4 = st.columns(4)
    weights = c1.selectbox("Weights", ["imagenet", "none"], index=0 if defaults.weights == "imagenet" else 1,
                           help="'none' = random initialisation: shows what transfer buys.")
    image_size = c2.number_input("Image size (px)", 32, 512, defaults.image_size or BACKBONES[defaults.backbone].input_size, step=16)
    batch_size = c3.number_input("Batch size", 1, 512, defaults.batch_size)
    seed = c4.number_input("Seed", 0, 2**31 - 1, defaults.seed)
    with st.expander("Fine-tuning and training settings"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Stage 1 epochs", 1, 500, defaults.epochs,
                                 help="Epochs of stage 1, or of training from scratch; early stopping may end it sooner.")
        fine_tune_epochs = c2.number_input("Stage 2 epochs", 0, 500, defaults.fine_tune_epochs)
        unfreeze_blocks = c3.number_input("Blocks to unfreeze", -1, 17, defaults.unfreeze_blocks,
                                          help="In stage 2, counted from the top: -1 = all, 0 = skip stage 2.")
        c1, c2, c3, c4 = st.columns(4)
        learning_rate = c1.number_input("Learning rate (new layers)", 1e-6, 1.0, defaults.learning_rate, format="%.0e")
        fine_tune_learning_rate = c2.number_input("Learning rate (stage 2)", 1e-7, 1.0, defaults.fine_tune_learning_rate, format="%.0e")
        augment = c3.checkbox("Augmentation", defaults.augment,
                              help="Random flips, rotations, zooms and contrast changes. Without augmentation the frozen part of the ConvNet runs once: stage 1 trains on "
                                   "cached features, stage 2 on cached activations below the unfrozen blocks. With it, "
                                   "every epoch sees new images, so the whole ConvNet runs every epoch (slower).")
        start_from_probe = c3.checkbox(
            "LP-FT: start from the probe", defaults.start_from_probe,
            help="Stage 1 is the feature extractor's softmax head, folded into one layer, and stage 2 fine-tunes "
                 "from it, instead of training a new fully connected layer first.")
        accelerate = c3.checkbox("Mixed precision + XLA", defaults.accelerate,
                                 help="On a GPU: float16 compute and compiled training steps; no effect on a CPU.")
        cut_choices = [FEATURE_CUT_AUTO, *range(17)]
        feature_cut = c4.selectbox(
            "Features from", cut_choices, index=cut_choices.index(defaults.feature_cut)
            if defaults.feature_cut in cut_choices else 0,
            format_func=lambda c: "auto (cross-validated)" if c == FEATURE_CUT_AUTO
            else "the last layer" if c == 0 else f"{c} blocks below the top",
            help="Feature extractor: which block's features the head reads. Earlier layers are more generic. "
                 "auto: the last layer or the earlier block LogME ranks first, whichever scores better in 5-fold "
                 "cross-validation on the training and validation images (one forward pass gives both); the "
                 "Strategy page measures it too.")
        resize = c4.selectbox(
            "To a square by", RESIZE_MODES, index=RESIZE_MODES.index(DataConfig.resize),
            format_func={"pad": "padding (shape kept)", "stretch": "stretching"}.get,
            help="How each picture becomes the model's square input. padding: its longer side made the image size, "
                 "white margins; measured better on pictures that are rarely square. stretching: as Keras' "
                 "loaders do. Square pictures come out the same either way.")
        precision = c4.selectbox(
            "Inference precision", PRECISIONS, index=PRECISIONS.index(defaults.precision),
            help="The frozen ConvNet's forward passes (feature extraction). auto: bfloat16 where this machine "
                 "computes it faster (measured once per backbone and size), float32 elsewhere. The heads, the "
                 "training and the saved model are float32 either way.")
    share_images = st.checkbox(
        "Show my images on the public result page", value=not hosted(),
        help="A result link shows metrics, curves and the confusion matrix to anyone who has it. With this on, "
             "it also shows thumbnails of test images (the most confident mistakes).")
    b1, b2, b3 = st.columns([1, 1, 2])
    train_clicked = b1.form_submit_button("Train", type="primary")
    compare_clicked = b2.form_submit_button(
        "Compare strategies",
        help=f"Feature extractor (softmax and one-vs-rest) on {COMPARE_FEATURE_SPLITS} splits (nearly free: the "
             "features are cached), two-stage fine-tuning and training from scratch on the number of splits "
             "set beside, every strategy on the same splits; then a verdict for each pair, 'tied' when the test "
             "images cannot tell them apart.")
    costly_splits = b3.number_input(
        "Comparison: splits for fine-tuning and from scratch", 1, COMPARE_MAX_SPLITS, COMPARE_COSTLY_SPLITS,
        help="Each split trains both again: the comparison takes about this many times their training time "
             "(below). One split compares them on its test images alone.")
    plan_slot = st.empty()  # what Compare runs, once the form's settings are known

# The recommended feature block was measured on the recommended backbone; another backbone's
# blocks differ, so its block is chosen automatically unless the user set one.
recommended_cut = rec.settings.get("feature_cut", 0) if rec else 0
if rec and recommended_cut and backbone != rec.settings.get("backbone") and int(feature_cut) == recommended_cut:
    feature_cut = FEATURE_CUT_AUTO
    st.caption(f"Features of {BACKBONES[backbone].title}: the block is chosen by cross-validation, since the "
               f"earlier-layer recommendation was measured on {BACKBONES[rec.settings.get('backbone', 'mobilenet')].title}.")
config = TrainConfig(
    backbone=backbone, strategy=strategy, head=head, weights=weights, image_size=int(image_size),
    feature_cut=int(feature_cut) if strategy == "feature_extractor" else 0,
    batch_size=int(batch_size), epochs=int(epochs), fine_tune_epochs=int(fine_tune_epochs),
    unfreeze_blocks=int(unfreeze_blocks), learning_rate=float(learning_rate),
    fine_tune_learning_rate=float(fine_tune_learning_rate), augment=augment, accelerate=accelerate, seed=int(seed),
    start_from_probe=start_from_probe, precision=precision,
)
data_config = DataConfig(seed=int(seed), resize=resize)
if config.strategy == "finetune":
    stage2 = ("runs the whole ConvNet every epoch (augmentation is on: each epoch sees new images)" if config.augment
              else "unfreezes every block, so it runs end to end" if config.unfreeze_blocks < 0
              else "trains on cached activations below the unfrozen blocks (the same result as running them every "
                   "epoch, several times faster)")
    if config.start_from_probe:
        st.caption(f"Fine-tuning path: stage 1 is the linear probe on the cached features (one fit, LP-FT); stage 2 "
                   f"starts from it and {stage2}.")
    else:
        st.caption("Fine-tuning path: " + (
            "augmentation is on, so both stages run the whole ConvNet every epoch (each epoch sees new images)."
            if config.augment else
            "the frozen ConvNet runs once for stage 1 (cached features); stage 2 unfreezes every block, so it runs "
            "end to end." if config.unfreeze_blocks < 0 else
            "the frozen layers run once; stage 1 trains on cached features and stage 2 on cached activations "
            "below the unfrozen blocks (the same result as running them every epoch, several times faster)."))
planned_comparison = comparison.plan(config, data_config, costly_splits=int(costly_splits))
plan_slot.caption(f"Compare queues {plan_summary(planned_comparison)}. "
                  + costly_time_note(store, dataset["name"], key))
planned = planned_comparison if compare_clicked else [(config, data_config)]
# Checked before anything is queued: a run without its weights would fail a minute later.
missing = next(filter(None, map(missing_weights, sorted({v.backbone for v, _ in planned if v.weights == "imagenet"}))),
               None)
if missing:
    weights_slot.warning(missing, icon=":material/cloud_off:")
if (train_clicked or compare_clicked) and missing:
    st.error("Not queued: it needs the ImageNet weights named above.")
elif train_clicked or compare_clicked:
    group = uuid.uuid4().hex[:8] if compare_clicked else None
    try:
        quotas.check_runs(store, [v for v, _ in planned], key)  # hosted: a comparison is refused whole, or queued whole
        ids = [submit(store, dataset["path"], v, d, name=dataset["name"], group=group, workspace=key,
                      share_images=share_images) for v, d in planned]
    except TLCoreError as err:
        st.error(plain(err))
    else:
        ensure_worker(store)
        st.success(f"Queued {len(ids)} run(s).")


