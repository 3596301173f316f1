"""The store, the current dataset and its report, as a Streamlit session sees them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from tl_core.data import DataConfig, build_report, decode_dataset, load_images
from tl_core.errors import TLCoreError
from tl_core.store import RunStore, default_data_dir, write_json_atomic
from ui.progress import StreamlitProgress

LAST_DATASET = "last_dataset.json"
PAGES = {
    "data": "app_pages/data.py",
    "strategy": "app_pages/strategy.py",
    "train": "app_pages/train.py",
    "runs": "app_pages/runs.py",
    "result": "app_pages/result.py",
    "predict": "app_pages/predict.py",
}


@st.cache_resource
def _store_at(data_dir: str) -> RunStore:
    return RunStore(data_dir)


def get_store() -> RunStore:
    """The store of ``$TL_DATA_DIR`` (default ``~/.tl_studio``), opened once per server process."""
    return _store_at(str(default_data_dir()))


def current_dataset() -> dict[str, Any] | None:
    """``{path, name}`` of the dataset this session works on, if one is loaded."""
    return st.session_state.get("dataset")


def set_dataset(path: str | Path, name: str) -> None:
    st.session_state["dataset"] = {"path": str(path), "name": name}
    st.session_state.pop("recommendation", None)
    write_json_atomic(get_store().data_dir / LAST_DATASET, st.session_state["dataset"])


def last_dataset() -> dict[str, Any] | None:
    """The dataset loaded most recently on this server, so a reloaded page can pick it up again."""
    try:
        dataset = json.loads((get_store().data_dir / LAST_DATASET).read_text())
    except (OSError, ValueError):
        return None
    return dataset if Path(dataset.get("path", "")).exists() else None


def dataset_stamp(path: Path) -> float:
    """Changes when files are added to or removed from the folder's class folders."""
    if path.is_file():
        return path.stat().st_mtime
    return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir() if p.is_dir()])


def dataset_report(path: str) -> dict[str, Any] | None:
    """The dataset's health report, decoded once per session with a progress bar.

    Errors become an ``st.error`` and ``None``.
    """
    key = (path, dataset_stamp(Path(path)))
    cache = st.session_state.setdefault("reports", {})
    if key not in cache:
        try:
            image_set = load_images(path)
            decoded = decode_dataset(image_set, None, DataConfig(), StreamlitProgress("Checking images"))
        except TLCoreError as err:
            st.error(str(err))
            return None
        cache[key] = build_report(image_set, decoded)
    return cache[key]


def require_dataset() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The current dataset and its report, or a pointer to the Data page."""
    dataset = current_dataset()
    if dataset is None:
        st.info("Load a dataset first.")
        previous = last_dataset()
        if previous and st.button(f"Continue with “{previous['name']}”", key="continue_dataset"):
            set_dataset(previous["path"], previous["name"])
            st.rerun()
        st.page_link(PAGES["data"], label="Go to Data", icon="📁")
        return None
    report = dataset_report(dataset["path"])
    return (dataset, report) if report is not None else None
