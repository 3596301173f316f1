"""Plotly figures shared by the app's pages and the self-contained HTML report.

Plain Plotly, no Streamlit: the engine's exported report draws the same charts the app shows.
Plotly draws a subset of HTML in any text of a figure: every user-derived string (class names,
run labels) goes in through :func:`tl_core.escape.plotly`, so it reads as typed.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from tl_core import escape
from tl_core.advisor import SCRATCH_MIN_PER_CLASS
from tl_core.backbones import BACKBONES
from tl_core.calibration import ece_of_table
from tl_core.config import STRATEGY_LABELS
from tl_core.metrics import CI_LABEL, reliability
from tl_core.progress import EPOCH_STAGES, STAGE_TITLES, TIMELINE_TITLES


def feature_cut(run: dict[str, Any]) -> int | None:
    """The block a feature-extractor run's features came from (0: the last layer): as set, or as its
    ``auto`` setting chose it; ``None`` while an ``auto`` run has not chosen yet."""
    cut = ((run.get("config") or {}).get("train") or {}).get("feature_cut") or 0
    return cut if cut >= 0 else (run.get("metrics") or {}).get("feature_cut")


def run_label(run: dict[str, Any]) -> str:
    """``Feature extractor (ovr, 4 blocks below the top) · mobilenet · Ab3x`` for legends and pickers.

    The brackets hold what tells runs of one strategy apart: the head and the feature block, LP-FT or
    augmentation, an image size other than the backbone's own.
    """
    train = (run.get("config") or {}).get("train", {})
    strategy = train.get("strategy")
    label = STRATEGY_LABELS.get(strategy, strategy or "?")
    details = []
    if strategy == "feature_extractor":
        details.append(str(train.get("head")))
        cut = feature_cut(run)
        if cut:
            details.append(f"{cut} blocks below the top")
    if strategy == "finetune" and train.get("start_from_probe"):
        details.append("LP-FT")
    if strategy != "feature_extractor" and train.get("augment"):
        details.append("augmented")
    spec = BACKBONES.get(train.get("backbone"))
    if train.get("image_size") and spec is not None and train["image_size"] != spec.input_size:
        details.append(f"{train['image_size']} px")
    if details:
        label += f" ({', '.join(details)})"
    if train.get("weights") == "none" and strategy != "scratch":
        label += " [random weights]"
    return f"{label} · {train.get('backbone')} · {run['id'][:4]}"


def _epoch_ticks(fig: go.Figure) -> dict[str, Any]:
    """Whole epochs only on an epoch axis (Plotly's own ticks for 2 epochs fall at 0.5 and 1.5)."""
    last = max((x for trace in fig.data for x in (trace.x or ()) if x is not None), default=1)
    return {"tickformat": "d", "tick0": 0, "dtick": 1 if last <= 20 else math.ceil(last / 10)}


def _texts(values) -> list[str]:
    return [escape.plotly(value) for value in values]


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=40, r=20, t=50, b=40), template="plotly_white")
    return fig


TICK_CHARS = 16  # a class name on an axis is cut to this many characters (whole in the hover)
TICKS_ACROSS = 90  # characters of class names that fit side by side under a chart; more are slanted


def _short(name: str) -> str:
    return name if len(name) <= TICK_CHARS else name[: TICK_CHARS - 1].rstrip() + "…"


def class_counts(per_class: dict[str, int]) -> go.Figure:
    """Images per class as bars; long class names cut short on the axis so they do not overlap."""
    names = _texts(per_class)
    fig = go.Figure(go.Bar(x=names, y=list(per_class.values()), marker_color="#4F46E5",
                           hovertemplate="%{x}: %{y} images<extra></extra>"))
    short = [_short(name) for name in per_class]
    fig.update_xaxes(tickvals=names, ticktext=_texts(short),
                     tickangle=0 if sum(len(name) + 2 for name in short) <= TICKS_ACROSS else -30)
    fig.update_yaxes(title="images")
    return _layout(fig, "Images per class", 320)


def decision_matrix(size: str, domain: str, point: tuple[float, float] | None = None, *,
                    measured: bool = True) -> go.Figure:
    """The 2 x 2 matrix, the recommended cell highlighted and the dataset drawn as a point (its height
    a guess from the user's answer when the similarity is not ``measured``)."""
    cells = [
        ("small", "similar", "Retrain only the new layers<br>(frozen ConvNet features)"),
        ("small", "different", "Retrain only the new layers<br>(earlier-layer features)"),
        ("large", "similar", "Fine-tune all layers<br>after a warm-up"),
        ("large", "different", f"Train from scratch<br>(from {SCRATCH_MIN_PER_CLASS:,} per class;<br>below: best-layer features)"),
    ]
    fig = go.Figure()
    for cell_size, cell_domain, text in cells:
        x0 = 0 if cell_size == "small" else 1
        y0 = 1 if cell_domain == "similar" else 0
        chosen = (cell_size, cell_domain) == (size, domain)
        fig.add_shape(
            type="rect", x0=x0, x1=x0 + 1, y0=y0, y1=y0 + 1, layer="below",
            fillcolor="#C7D2FE" if chosen else "#F3F4F6", line=dict(color="#4F46E5" if chosen else "#D1D5DB", width=3 if chosen else 1),
        )
        fig.add_annotation(x=x0 + 0.5, y=y0 + 0.8, text=f"<b>{text}</b>", showarrow=False, font=dict(size=13))
    if point is not None:
        fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers+text", text=["your data" if measured else "your data (similarity not measured)"],
                                 textposition="bottom center", marker=dict(size=16, color="#DC2626", symbol="star")))
    fig.update_xaxes(range=[0, 2], tickvals=[0.5, 1.5], ticktext=["small data", "large data"], showgrid=False, zeroline=False)
    fig.update_yaxes(range=[0, 2], tickvals=[0.5, 1.5], ticktext=["different domain", "similar domain"], showgrid=False, zeroline=False)
    fig.update_layout(showlegend=False)
    return _layout(fig, "Decision matrix: data size x domain similarity", 420)


def learning_curves(runs: list[dict[str, Any]], metric: str = "val_accuracy") -> go.Figure:
    """One line per run and stage over a shared epoch axis (stage 2 continues after stage 1)."""
    fig = go.Figure()
    for run in runs:
        offset = 0
        for stage in EPOCH_STAGES:
            epochs = (run.get("epochs") or {}).get(stage) or []
            if not epochs:
                continue
            xs = [offset + e["epoch"] for e in epochs]
            fig.add_trace(go.Scatter(x=xs, y=[e.get(metric) for e in epochs], mode="lines+markers",
                                     name=escape.plotly(f"{run_label(run)} {stage}")))
            offset = xs[-1]
    fig.update_xaxes(title="epoch", **_epoch_ticks(fig))
    fig.update_yaxes(title=metric.replace("_", " "))
    return _layout(fig, f"Learning curves ({metric.replace('_', ' ')})")


def stage_curves(epochs: dict[str, list[dict[str, float]]]) -> go.Figure:
    """Loss (left) and accuracy (right) per epoch, train solid and validation dotted, stages end to end."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.08)
    colors = {"stage1": "#4F46E5", "stage2": "#DC2626", "scratch": "#059669"}
    offset = 0
    for stage in EPOCH_STAGES:
        rows = epochs.get(stage) or []
        if not rows:
            continue
        xs = [offset + r["epoch"] for r in rows]
        for column, metric in ((1, "loss"), (2, "accuracy")):
            for prefix, dash in (("", "solid"), ("val_", "dot")):
                key = prefix + metric
                if key in rows[0]:
                    fig.add_trace(
                        go.Scatter(x=xs, y=[r.get(key) for r in rows], mode="lines+markers", line=dict(dash=dash, color=colors[stage]),
                                   name=f"{stage} {'validation' if prefix else 'train'}", legendgroup=f"{stage}{prefix}",
                                   showlegend=column == 1),
                        row=1, col=column,
                    )
        if stage == "stage2" and offset:  # where fine-tuning starts: the curves jump there
            for column in (1, 2):
                fig.add_vline(x=offset + 0.5, line=dict(color="#6B7280", dash="dash", width=1), row=1, col=column)
            fig.add_annotation(x=offset + 0.5, y=1.0, yref="paper", text="stage 2 starts", showarrow=False,
                               xanchor="left", font=dict(size=11, color="#6B7280"))
        offset = xs[-1]
    fig.update_xaxes(title="epoch", **_epoch_ticks(fig))
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    return _layout(fig, "Loss and accuracy per epoch")


def time_ticks(seconds: list[float]) -> list[float]:
    """Ticks for a log-scale time axis spanning ``seconds``: 1, 10, 100 s..., with 2 and 5 between them
    when the times span less than three powers of ten (Plotly's own read "3 4 5 ... 10 2 3")."""
    positive = [s for s in seconds if s and s > 0] or [1.0]
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    high = max(high, low + 1)
    steps = (1, 2, 5) if high - low < 3 else (1,)
    return [float(f"{step * 10.0**k:g}") for k in range(low, high + 1) for step in steps if step == 1 or k < high]


def accuracy_vs_time(runs: list[dict[str, Any]], *, best: set[str] = frozenset()) -> go.Figure:
    """Each run's test accuracy, with its Wilson interval as an error bar, against its training time
    (log scale); runs in ``best`` (the highest accuracy on their dataset) drawn as diamonds, named
    "best" (★ means a comparison's best group elsewhere)."""
    fig = go.Figure()
    seconds = []
    for run in runs:
        metrics = run.get("metrics") or {}
        if metrics.get("test_accuracy") is None:
            continue
        seconds.append(metrics.get("seconds"))
        accuracy = metrics["test_accuracy"]
        interval = reliability(metrics, macro_f1=False)["test_accuracy_ci"] if metrics.get("confusion_matrix") else None
        error = (dict(type="data", array=[interval[1] - accuracy], arrayminus=[accuracy - interval[0]], thickness=1.5)
                 if interval else None)
        fig.add_trace(go.Scatter(x=[metrics.get("seconds")], y=[accuracy], mode="markers", error_y=error,
                                 marker=dict(size=16 if run["id"] in best else 12,
                                             symbol="diamond" if run["id"] in best else "circle"),
                                 name=escape.plotly(("best · " if run["id"] in best else "") + run_label(run))))
    ticks = time_ticks(seconds)
    fig.update_xaxes(title="training time (s)", type="log", tickvals=ticks,
                     ticktext=[f"{t:g} s" for t in ticks], minor=dict(showgrid=False, ticks=""))
    fig.update_yaxes(title=f"test accuracy (bars: {CI_LABEL})", range=[0, 1.12])
    return _layout(fig, "Test accuracy against training time")


def confusion(metrics: dict[str, Any]) -> go.Figure:
    names = _texts(metrics["class_names"])
    matrix = metrics["confusion_matrix"]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues", text=matrix, texttemplate="%{text}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_xaxes(title="predicted")
    fig.update_yaxes(title="true", autorange="reversed")
    return _layout(fig, "Confusion matrix (test split)", 420)


def top_classes(probabilities: dict[str, float]) -> go.Figure:
    names = list(probabilities)[::-1]
    fig = go.Figure(go.Bar(x=[probabilities[n] for n in names], y=_texts(names), orientation="h",
                           marker_color="#4F46E5"))
    fig.update_xaxes(range=[0, 1], title="probability")
    return _layout(fig, "", 60 + 28 * len(names))


def comparison(summary: dict[str, Any]) -> go.Figure:
    """Each strategy's mean test accuracy over the splits with its 95% interval (best group filled)."""
    strategies = summary["strategies"][::-1]  # best at the top
    fig = go.Figure()
    for best in (True, False):
        chosen = [s for s in strategies if s["best"] == best]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[s["mean_accuracy"] for s in chosen], y=_texts(s["label"] for s in chosen), mode="markers",
            marker=dict(size=13, symbol="circle" if best else "circle-open", color="#4F46E5"),
            error_x=dict(type="data", symmetric=False,
                         array=[s["accuracy_ci"][1] - s["mean_accuracy"] for s in chosen],
                         arrayminus=[s["mean_accuracy"] - s["accuracy_ci"][0] for s in chosen]),
            customdata=[[s["n_splits"], s["accuracy_ci"][0], s["accuracy_ci"][1]] for s in chosen],
            hovertemplate="%{y}<br>mean %{x:.1%} over %{customdata[0]} splits<br>"
                          "95% CI %{customdata[1]:.1%}-%{customdata[2]:.1%}<extra></extra>",
            name="best group" if best else "others",
        ))
    fig.update_xaxes(title="mean test accuracy over the splits (95% interval)", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(categoryorder="array", categoryarray=_texts(s["label"] for s in strategies))
    return _layout(fig, "Each strategy's mean test accuracy over its splits", 110 + 46 * len(strategies))


def time_breakdown(parts: list[tuple[str, float]]) -> go.Figure:
    """Where a run's time went (:func:`tl_core.progress.time_breakdown`): one bar a part, in order."""
    titles = {**STAGE_TITLES, **TIMELINE_TITLES}
    names = [titles.get(part) or " while ".join(titles.get(p, p) for p in part.split("+")) for part, _ in parts]
    seconds = [value for _, value in parts]
    total = sum(seconds) or 1.0
    fig = go.Figure(go.Bar(
        x=seconds, y=names, orientation="h", marker_color="#4c78a8",
        text=[f"{value:.1f} s ({value / total:.0%})" for value in seconds], textposition="auto",
        hovertemplate="%{y}: %{x:.2f} s<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")  # first part on top
    fig.update_xaxes(title="seconds")
    return _layout(fig, f"Where the time went: {total:.1f} s in all", 90 + 34 * len(parts))


def reliability_diagram(before: list[dict[str, float]], after: list[dict[str, float]],
                        ece_before: float | None = None, ece_after: float | None = None) -> go.Figure:
    """Accuracy against confidence per bin, before and after calibration, with the diagonal of a model
    that is exactly as sure as it is right; a marker's size is its bin's number of images. Each curve's
    ECE is in the legend: as given (``Calibration.ece_before``, 15 bins), else that of its table's bins."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                             name="as sure as right", hoverinfo="skip"))
    for rows, ece, title, color in ((before, ece_before, "before calibration", "#e45756"),
                                    (after, ece_after, "after calibration", "#4c78a8")):
        name = f"{title}: ECE {ece_of_table(rows) if ece is None else ece:.3f}"
        fig.add_trace(go.Scatter(
            x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers", name=name,
            marker=dict(size=[6 + 14 * math.sqrt(r["count"] / max(1, max(x["count"] for x in rows))) for r in rows],
                        color=color),
            line=dict(color=color), customdata=[r["count"] for r in rows],
            hovertemplate="confidence %{x:.0%}: right %{y:.0%} of %{customdata} images<extra>" + title + "</extra>",
        ))
    fig.update_xaxes(title="confidence (top probability)", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title="accuracy", range=[0, 1.02], tickformat=".0%")
    return _layout(fig, "Reliability on the test split", 380)
