"""Result: one run, read-only, rebuilt from storage alone so its link can be shared."""

from __future__ import annotations

from urllib.parse import urlsplit

import pandas as pd
import streamlit as st

from tl_core import charts
from tl_core.calibration import ece_noise_text
from tl_core.charts import run_label
from tl_core.comparison import best_run
from tl_core.errors import TLCoreError
from tl_core.escape import markdown as plain
from tl_core.export import (html_report, model_file, readable_settings, split_text, take_home,
                            take_home_name, take_home_usage)
from tl_core.hardware import keep_off_gpu
from tl_core.jobs import resume
from tl_core.metrics import CI_LABEL, CONFIDENCE, accuracy_text, reliability
from tl_core.store import is_valid_run_id
from ui.export_panel import export_panel
from ui.gallery import mistakes_gallery
from ui.reliability import show_flags
from ui.state import ICONS, get_store, hosted, may_show_images, owns, workspace

store = get_store()
run_id = st.query_params.get("run")


def _picker_label(run: dict, best: dict | None) -> str:
    """A run as the picker lists it: its label, its test accuracy (or how it ended), the best marked."""
    if run["status"] != "succeeded":
        return f"{run_label(run)} · {run['status']}"
    mark = " · best" if best is not None and run["id"] == best["id"] else ""
    return f"{run_label(run)} · test accuracy {accuracy_text(run['metrics'])}{mark}"


def _take_home_bytes(run: dict) -> bytes:
    keep_off_gpu()  # built on the CPU: the GPU and its memory are the training worker's
    return take_home(run).read_bytes()


if not run_id:
    st.title(f"{ICONS['result']} Result")
    finished = [r for r in store.list_runs(workspace=workspace()) if r["status"] in ("succeeded", "failed", "cancelled")]
    if not finished:
        st.info("No finished run yet.")
        st.stop()
    best = best_run(finished)
    labels = {_picker_label(r, best): r["id"] for r in finished}
    choice = st.selectbox("Run", list(labels), index=finished.index(best) if best else 0,
                          help="It opens on the finished run with the highest test accuracy "
                               "(the most recent of equals).")
    if st.button("Open", type="primary"):
        st.query_params["run"] = labels[choice]
        st.rerun()
    st.stop()

if not is_valid_run_id(run_id):
    st.error("This link does not point to a run: check that it was copied whole.")
    st.stop()
try:
    run = store.get_run(run_id)
    store.ensure_local(run_id)  # its model and heat maps, from the artifacts location after a wiped disk
except TLCoreError:
    st.error("No run with this id: it may have been deleted, or the link is incomplete.")
    st.stop()

metrics = run.get("metrics") or {}
dataset = run.get("dataset") or {}
train = (run.get("config") or {}).get("train", {})
st.title(f"{ICONS['result']} {run_label(run)}")

mine = owns(run)  # hosted: the visitor whose workspace made it; anyone else reads it only
if run["status"] != "succeeded":
    {"failed": st.error, "cancelled": st.warning}.get(run["status"], st.info)(
        f"Status: {run['status']}. {plain(run.get('error') or '')}"
    )
    if mine and run["status"] in ("failed", "cancelled") and st.button("Resume this run", type="primary",
                                                                       help="Go on from its last completed epoch"):
        try:
            resume(store, run["id"])
        except TLCoreError as err:
            st.warning(plain(err))
        else:
            st.success("Queued again: it goes on from its last completed epoch. Follow it on the Train page.")

if metrics.get("confusion_matrix"):
    facts = reliability(metrics)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Test accuracy", f"{metrics['test_accuracy']:.1%}",
              help=f"The share of the held-out test images it classifies right, with its {CONFIDENCE:.0%} (Wilson) interval: "
                   "on a small test split one image moves it by several points.")
    c1.caption(f"{CI_LABEL} {facts['test_accuracy_ci'][0]:.1%}-{facts['test_accuracy_ci'][1]:.1%}")
    c2.metric("Macro F1", f"{metrics['macro_f1']:.3f}",
              help=f"The mean of the per-class F1 scores, with its {CONFIDENCE:.0%} interval (Bayesian, from the "
                   "confusion matrix): on few test images it is wide.")
    c2.caption(f"{CI_LABEL} {facts['macro_f1_ci'][0]:.3f}-{facts['macro_f1_ci'][1]:.3f}")
    c3.metric("Largest class alone", f"{facts['majority_baseline']:.1%}",
              help="The accuracy of always guessing the test split's largest class: a model must clearly beat it.")
    c3.caption(f"{facts['n_test']} test images")
    c4.metric("Training time", f"{metrics['seconds']:.1f} s")
    show_flags(metrics)

base = (st.context.url or "").split("?")[0]
st.markdown("**Share this result** (read-only):")
st.code(f"{base}?run={run['id']}", language=None)
if not hosted() and urlsplit(base).hostname in ("localhost", "127.0.0.1", "::1"):
    st.caption("This address opens on this computer only (the app listens on 127.0.0.1). For a link others can "
               "open, deploy it in hosted mode (README: Deploy on Streamlit Community Cloud), or download the "
               "report (HTML) below and send the file.")

d1, d2 = st.columns(2)
path = model_file(run)
if path is not None:
    # Callables: the file is read (and the report built) only when the button is clicked.
    # on_click="ignore": a click does not rerun the page, so a second download never races a rerun
    # that re-registers the deferred files (seen as a generic ".bin" name in the browser test).
    d1.download_button("Download the model (.zip)", lambda: _take_home_bytes(run), file_name=take_home_name(run),
                       mime="application/zip", on_click="ignore",
                       help="model.keras (takes pictures of any size; resizes them itself), classes.json (the class "
                            "names) and a README, in one zip. Loads with plain Keras.")
d2.download_button("Download the report (HTML)", lambda: html_report(run, files=may_show_images(run)), file_name=f"report-{run['id'][:8]}.html",
                   mime="text/html", on_click="ignore")

if path is not None:
    with st.expander("Use the downloaded model in Python"):
        st.caption("Save a picture as photo.jpg beside the zip and run this (Python with keras, tensorflow, pillow):")
        st.code(take_home_usage(run), language="python")

names = ["Overview", "Confusion matrix", "Per class", "Most confident mistakes", "Curves", "Confidence"]
can_export = mine and path is not None
tabs = st.tabs(names + (["Export"] if can_export else []))
overview, confusion_tab, per_class_tab, mistakes_tab, curves_tab, confidence_tab = tabs[:6]
with overview:
    left, right = st.columns(2)
    with left:
        st.markdown("**Settings**")
        shown = readable_settings(train, metrics)  # only what applied to its strategy; never the server's paths
        # A table, not a grid: long values (a weights file's name) wrap instead of being cut. Its cells are
        # Markdown: the values are escaped, so a file name reads as typed.
        # The names as the index: Streamlit 1.52 (the floor) has no hide_index for tables.
        st.table(pd.DataFrame({"value": [plain(v) for v in shown.values()]}, index=pd.Index(list(shown), name="setting")))
    with right:
        st.markdown("**Dataset**")
        if dataset:
            st.write(f"{dataset['n_images']} images in {dataset['n_classes']} classes · {len(dataset['skipped'])} skipped")
            st.plotly_chart(charts.class_counts(dataset["per_class"]), key="result_counts")
        if metrics:
            st.write(f"{split_text(metrics.get('split'))} · trained on {plain(metrics.get('hardware'))}")
            for note in metrics.get("notes", []):
                st.caption(plain(note))
with confusion_tab:
    if metrics.get("confusion_matrix"):
        st.plotly_chart(charts.confusion(metrics), key="confusion")
with per_class_tab:
    if metrics.get("per_class"):
        st.dataframe(pd.DataFrame(metrics["per_class"]).T.rename_axis("class").reset_index(), hide_index=True)
with mistakes_tab:
    mistakes = metrics.get("top_mistakes") or []
    if not mistakes:
        st.caption("No mistakes on the test split.")
    elif not may_show_images(run):
        st.caption("Its owner chose not to share the images of this run.")
    else:
        mistakes_gallery(store, run, mistakes, can_compute=mine)
with confidence_tab:
    calibration = metrics.get("calibration")
    if not calibration:
        st.caption("This run was trained before probabilities were calibrated.")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Calibration error (ECE)", f"{calibration['ece_after']:.3f}",
                  delta=f"{calibration['ece_after'] - calibration['ece_before']:+.3f} from {calibration['ece_before']:.3f}",
                  delta_color="inverse",
                  help="The mean gap between how sure the model says it is and how often it is right, on the test "
                       "split, after temperature scaling fitted on the validation split (before: the delta's start).")
        c2.metric("Temperature", f"{calibration['temperature']:.2f}",
                  help="Above 1: the model was over-confident and its probabilities were softened; below 1, sharpened.")
        c3.metric(f"Plausible-class sets at {calibration['coverage']:.0%}", f"{calibration['test_coverage']:.0%} covered",
                  help="Predict shows every class whose calibrated probability reaches "
                       f"{calibration['threshold']:.0%} (split conformal prediction): on the test split such sets held "
                       f"the right class for {calibration['test_coverage']:.0%} of the images, "
                       f"{calibration['mean_set_size']:.1f} classes on average.")
        st.caption(ece_noise_text(calibration, metrics["n_test"]))
        st.plotly_chart(charts.reliability_diagram(calibration["reliability_before"], calibration["reliability_after"],
                                                   calibration["ece_before"], calibration["ece_after"]),
                        key="reliability_diagram")
    novelty = metrics.get("novelty")
    if novelty and novelty.get("test_flagged") is not None:
        st.caption(f"**None of these?** Predict also flags a picture whose features lie farther from every class "
                   f"than {novelty['quantile']:.0%} of the validation images' do (Mahalanobis distance to the "
                   f"nearest class mean): it flagged {novelty['test_flagged']:.0%} of this run's test images, "
                   "pictures of its own classes.")

if can_export:
    with tabs[6]:
        export_panel(store, run)
with curves_tab:
    if any(run["epochs"].values()):
        st.plotly_chart(charts.stage_curves(run["epochs"]), key="result_curves")
    else:
        st.caption("This run fitted a linear head on features in one step; there are no epochs to draw.")
