"""Exports of a finished run: the ``.keras`` model file and a self-contained HTML report."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from tl_core import charts
from tl_core.errors import ExportError


def model_file(run: dict[str, Any]) -> Path | None:
    """The run's ``.keras`` file, if it was saved."""
    path = Path(run.get("model_path") or "")
    return path if run.get("status") == "succeeded" and path.is_file() else None


def load_model_file(path: str | Path):
    """Load a ``.keras`` file with Keras' safe mode: a file carrying Python code (a ``Lambda``
    layer's bytecode) is refused, never run. Our own models need no such code.

    Raises:
        ExportError: the file is not a loadable, safe Keras model.
    """
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        if "safe_mode" in str(err) or "unsafe" in str(err).lower() or "lambda" in str(err).lower():
            raise ExportError(f"Refused to load {Path(path).name}: it contains Python code (unsafe).") from err
        raise ExportError(f"{Path(path).name} is not a Keras model this app can load: {err}") from err
    except (OSError, KeyError, TypeError) as err:
        raise ExportError(f"{Path(path).name} is not a Keras model this app can load: {err}") from err


def html_report(run: dict[str, Any]) -> str:
    """One HTML file with the run's settings, metrics and charts (Plotly inlined, works offline)."""
    metrics = run.get("metrics") or {}
    train = (run.get("config") or {}).get("train", {})
    dataset = run.get("dataset") or {}
    figures = []
    if metrics.get("confusion_matrix"):
        figures.append(charts.confusion(metrics))
    if any(run.get("epochs", {}).values()):
        figures.append(charts.stage_curves(run["epochs"]))
    if dataset.get("per_class"):
        figures.append(charts.class_counts(dataset["per_class"]))
    plots = "".join(
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    )
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in sorted(train.items())
    )
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in (metrics.get("per_class") or {}).items()
    )
    mistakes = "".join(
        f"<tr><td>{html.escape(m['file'])}</td><td>{html.escape(m['true'])}</td>"
        f"<td>{html.escape(m['predicted'])}</td><td>{m['probability']:.2f}</td></tr>"
        for m in metrics.get("top_mistakes") or []
    )
    headline = (
        f"<p class='big'>Test accuracy <b>{metrics['test_accuracy']:.1%}</b> · macro F1 "
        f"<b>{metrics['macro_f1']:.3f}</b> · {metrics.get('seconds', 0):.0f} s on {html.escape(str(metrics.get('hardware')))}</p>"
        if metrics.get("test_accuracy") is not None
        else f"<p class='big'>Status: {html.escape(run['status'])} {html.escape(run.get('error') or '')}</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Transfer Learning Studio · run {html.escape(run['id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#111}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
.big{{font-size:1.3em}}</style></head><body>
<h1>{html.escape(charts.run_label(run))}</h1>
<p>Run <code>{html.escape(run['id'])}</code> · {html.escape(run['status'])} ·
{time.strftime('%Y-%m-%d %H:%M', time.localtime(run['created_at']))}</p>
{headline}
<p>{dataset.get('n_images', '?')} images in {dataset.get('n_classes', '?')} classes;
{len(dataset.get('skipped', []))} skipped. Split: {html.escape(str(metrics.get('split', '')))}.</p>
{plots}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>test images</th></tr>{per_class}</table>
<h2>Most confident mistakes</h2><table><tr><th>file</th><th>true</th><th>predicted</th><th>probability</th></tr>{mistakes}</table>
<h2>Settings</h2><table>{rows}</table>
<p>{'<br>'.join(html.escape(n) for n in metrics.get('notes', []))}</p>
</body></html>"""
