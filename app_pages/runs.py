"""Runs: every run in a table, accuracy against time, and learning curves side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tl_core import charts, comparison
from tl_core.backbones import weights_label
from tl_core.charts import run_label
from tl_core.config import STRATEGY_LABELS
from tl_core.metrics import CI_LABEL, CONFIDENCE, reliability
from ui.reliability import plain
from ui.state import ICONS, PAGES, current_dataset, get_store, workspace

MAX_COMPARISONS_SHOWN = 3
UNNAMED = "(no name)"
MISSING = "—"  # what a cell without a value shows (Streamlit writes "None" otherwise)


st.title(f"{ICONS['runs']} Runs")
store = get_store()
key = workspace()
runs = store.list_runs(workspace=key)
if not runs:
    st.info("No runs yet.")
    st.page_link(PAGES["train"], label="Train one", icon=ICONS["train"])
    st.stop()

datasets = list(dict.fromkeys(run.get("name") or UNNAMED for run in runs))  # newest first
if len(datasets) > 1:
    current = (current_dataset() or {}).get("name")
    shown = st.multiselect("Datasets", datasets, default=[current] if current in datasets else datasets,
                           key="runs_datasets", help="The runs, comparisons and charts below are those of these "
                                                     "datasets. Leave it empty to see every run.")
    runs = [run for run in runs if (run.get("name") or UNNAMED) in (shown or datasets)]
top_runs = comparison.best_per_dataset(runs)

best_runs = set()
for position, (group, members) in enumerate(list(comparison.groups(runs).items())[:MAX_COMPARISONS_SHOWN]):
    summary = comparison.summarize(store, members)
    best_runs |= {rid for s in summary["strategies"] if s["best"] for rid in s["run_ids"]}
    if position == 0:
        st.subheader("Strategy comparisons")
        st.caption("Every strategy on the same repeated stratified splits. A verdict says 'better' only when a "
                   "paired bootstrap over the same test images rules out no difference; it holds the trained models "
                   "fixed (a new training run varies too), and an image can be a test image in several splits. "
                   "★ best group: every strategy that no other is measurably better than.")
    with st.expander(f"Comparison on {plain(members[0].get('name') or 'a dataset')} · "
                     f"{sum(s['n_splits'] for s in summary['strategies'])} of {len(members)} runs finished",
                     expanded=position == 0):
        if not summary["strategies"]:
            st.caption("No finished run yet.")
            continue
        n_shared = len(summary["shared_seeds"])
        shared_column = f"mean, {n_shared} shared split{'s' if n_shared != 1 else ''}"
        st.dataframe(pd.DataFrame([{
            "": "★" if s["best"] else "",
            "strategy": s["label"],
            "splits": f"{s['n_splits']} of {s['planned']}",
            "mean accuracy": s["mean_accuracy"],
            CI_LABEL: "{:.1%}-{:.1%}".format(*s["accuracy_ci"]),
            shared_column: s["shared_mean_accuracy"],
            "mean time (s)": s["seconds"],
            "warning": f"flagged on {s['flagged']} of {s['n_splits']} splits" if s["flagged"] else "",
            "per split": ", ".join(f"{a:.1%}" for a in s["accuracies"]),
        } for s in summary["strategies"]]), hide_index=True, column_config={
            "mean accuracy": st.column_config.NumberColumn(format="%.3f", help="Over this strategy's own splits"),
            shared_column: st.column_config.NumberColumn(
                format="%.3f", help="Over the splits every strategy finished (the order within the best group "
                                    "and the rest); each verdict uses the splits its two strategies share"),
            "mean time (s)": st.column_config.NumberColumn(format="%.1f"),
        })
        baselines = [b for s in summary["strategies"] for b in s["majority_baselines"]]
        if baselines:
            low, high = min(baselines), max(baselines)
            st.caption(f"Always guessing the largest class scores {low:.1%}"
                       + (f"-{high:.1%}" if high - low > 0.0005 else "") + " on these splits; a flagged run "
                       "predicts one class for everything or is not clearly better than that (open it for why).")
        st.plotly_chart(charts.comparison(summary), key=f"comparison_{group}")
        for verdict in summary["verdicts"]:
            st.markdown(f"- {'🟰' if verdict['verdict'] == 'tied' else '🔼'} {verdict['sentence']}")
        if summary["without_predictions"]:
            st.caption(f"{summary['without_predictions']} run(s) made before per-image predictions were kept "
                       "are left out of the verdicts.")

rows = []
for run in runs:
    train = (run.get("config") or {}).get("train", {})
    metrics = run.get("metrics") or {}
    timing = metrics.get("timing") or {}
    speeds = [t["images_per_second"] for t in timing.values() if t.get("images_per_second")]
    facts = reliability(metrics, macro_f1=False) if metrics.get("confusion_matrix") else None
    rows.append(
        {
            "": " ".join(mark for mark, on in (("best", run["id"] in top_runs), ("★", run["id"] in best_runs)) if on),
            "run": run_label(run),
            "dataset": run.get("name") or UNNAMED,
            "status": run["status"],
            "test accuracy": metrics.get("test_accuracy"),
            CI_LABEL: "{:.1%}-{:.1%}".format(*facts["test_accuracy_ci"]) if facts else "",
            "time (s)": metrics.get("seconds"),
            # A failed run's own error (its first line): why it has no accuracy.
            "warning": " ".join(facts["flags"]) if facts else (run.get("error") or "").strip().split("\n")[0],
            "weights": weights_label(train.get("weights")),
            # Kept in the data (hidden: the table fits a laptop screen); the result page shows them.
            "strategy": STRATEGY_LABELS.get(train.get("strategy"), train.get("strategy")),
            "backbone": train.get("backbone"),
            "test images": facts["n_test"] if facts else None,
            "largest class alone": facts["majority_baseline"] if facts else None,
            "macro F1": metrics.get("macro_f1"),
            "images/s (slowest stage)": min(speeds) if speeds else None,
        }
    )
table = pd.DataFrame(rows)
st.caption("**best**: the highest test accuracy among the finished runs on its dataset · ★: in a comparison's best "
           "group (above).")
# Opened within this session (no link carries the private workspace key): select a row, then open it.
picked = st.dataframe(
    table,
    hide_index=True,
    key="runs_table",
    on_select="rerun",
    selection_mode="single-row",
    placeholder=MISSING,
    # What a laptop screen (1400 px) shows without scrolling sideways; the rest stays in the data.
    column_order=["", "run"] + (["dataset"] if len({r["dataset"] for r in rows}) > 1 else [])
    + ["status", "test accuracy", CI_LABEL, "time (s)", "warning"],
    column_config={
        "": st.column_config.TextColumn(width=48),
        "run": st.column_config.TextColumn(width=330),
        "dataset": st.column_config.TextColumn(width=90),
        "status": st.column_config.TextColumn(width=85),
        "test accuracy": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=1, width=110),
        CI_LABEL: st.column_config.TextColumn(help=f"{CONFIDENCE:.0%} Wilson interval of the test accuracy", width=105),
        "time (s)": st.column_config.NumberColumn(format="%.1f", help="Training time", width=65),
        "warning": st.column_config.TextColumn(help="Why not to trust the test accuracy, if there is a reason, "
                                                    "or why a run failed (open the run for details)"),
    },
).selection.rows
if picked:
    chosen_run = runs[picked[0]]
    st.page_link(PAGES["result"], label=f"Open the result of {run_label(chosen_run)}", icon=ICONS["result"],
                 query_params={"run": chosen_run["id"]})
else:
    st.caption("Select a row (the box at its left) to open its result page.")

finished = [r for r in runs if r["status"] == "succeeded"]
if finished:
    st.plotly_chart(charts.accuracy_vs_time(finished, best=top_runs), key="acc_time")
    labels = {run_label(r): r for r in finished}
    # Feature-extractor runs fit in one step (no curve): the default shows runs that have epochs.
    with_curves = [name for name, r in labels.items()
                   if (r.get("config") or {}).get("train", {}).get("strategy") != "feature_extractor"]
    if not with_curves:
        st.caption("No learning curves to compare: every run here is a feature extractor, whose linear head is "
                   "fitted in one step (no epochs). Two-stage fine-tuning and from-scratch runs have curves.")
    chosen = st.multiselect("Compare learning curves of", list(labels), default=with_curves[:4]) if with_curves else []
    selected = [store.get_run(labels[name]["id"]) for name in chosen]
    with_epochs = [r for r in selected if any(r["epochs"].values())]
    if with_epochs:
        metric = st.radio("Curve", ["val_accuracy", "val_loss", "accuracy", "loss"], horizontal=True)
        st.plotly_chart(charts.learning_curves(with_epochs, metric), key="curves")
    without = [run_label(r) for r in selected if not any(r["epochs"].values())]
    if without:
        st.caption("Not drawn: " + plain(", ".join(without)) + ": fitted in one step, no epochs (a linear head on "
                   "the features).")
