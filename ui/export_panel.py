"""The Result page's export panel: each format exported in a subprocess, checked, then offered."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import streamlit as st

from tl_core.escape import markdown as plain
from tl_core.export import FORMATS
from tl_core.fsutil import write_json_atomic
from tl_core.store import RunStore
from ui.cli import run_cli

LABELS = {
    "keras": "Keras .keras (any image size, preprocessing inside)",
    "savedmodel": "TensorFlow SavedModel (TF Serving)",
    "tflite": "TFLite float32 (mobile, fixed size)",
    "tflite-int8": "TFLite int8 dynamic range (4x smaller)",
}


def _bundle(result: dict[str, Any]) -> bytes:
    """The export (a file or a SavedModel folder) and its model card, as one zip."""
    path = Path(result["path"])
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    files += [Path(f"{path}.card.md"), Path(f"{path}.card.json")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.relative_to(path.parent).as_posix())
    return buffer.getvalue()


def export_panel(store: RunStore, run: dict[str, Any]) -> None:
    folder = store.run_dir(run["id"]) / "exports"
    fmt = st.selectbox("Format", FORMATS, format_func=LABELS.get, key="export_format")
    record = folder / f"{fmt}.json"
    result = json.loads(record.read_text()) if record.is_file() else None
    if st.button("Export and check" if result is None else "Export and check again", type="primary"):
        record.unlink(missing_ok=True)  # a failed export must not leave the previous one's figures
        with st.spinner(f"Exporting to {fmt}, loading the file back and checking it on the test split..."):
            _, result = run_cli(["export", run["id"], "--format", fmt, "--out", str(folder / fmt / "model"),
                                 "--data-dir", str(store.data_dir)])
        if "error" in result:
            st.error(f"The export failed: {plain(result['error'])}")
            return
        write_json_atomic(record, result)
    if result is None:
        st.caption("Each export is loaded back from its file and run on this run's test images before it is "
                   "offered: you see how often it agrees with the app's model.")
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Agreement with the app", f"{result['agreement']:.1%}",
              help="Top-1 agreement on the test images, given to the export at the model's input size.")
    c2.metric("Export's test accuracy", f"{result['accuracy']:.1%}")
    c3.metric("App's test accuracy", f"{result['app_accuracy']:.1%}")
    c4.metric("Size", f"{result['bytes'] / 1024**2:.1f} MB")
    required = result["required_agreement"]
    if result["passed"]:
        st.success(f"Checked on {result['n_test']} test images: "
                   + (f"agreement {result['agreement']:.1%} (required {required:.0%})." if required is not None
                      else "int8 quantisation changes the weights, so its agreement is reported as measured."))
        allowed = True
        if result.get("agreement_any_size") is not None:
            st.caption(f"Given the original pictures at their own size (the export resizes them itself with "
                       f"TensorFlow, the app with Pillow), it agreed on {result['agreement_any_size']:.1%}.")
    else:
        st.error(f"This export disagrees with the app's model on {1 - result['agreement']:.1%} of the test images "
                 f"(required agreement {required:.0%}). It predicts differently from what you tested.")
        allowed = st.checkbox("I understand; let me download it anyway", key=f"anyway_{fmt}")
    if allowed and Path(result["path"]).exists():
        st.download_button("Download the export and its model card (.zip)", lambda: _bundle(result),
                           file_name=f"model-{run['id'][:8]}-{fmt}.zip", mime="application/zip", on_click="ignore")
        with st.expander("Model card"):
            st.markdown(Path(f"{result['path']}.card.md").read_text())
