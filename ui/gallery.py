"""Image grids: class thumbnails and galleries of predictions."""

from __future__ import annotations

import io
import json

import streamlit as st
from PIL import Image, ImageOps

from tl_core.config import DEFAULT_MAX_PIXELS
from tl_core.data import decode_image, load_images
from tl_core.datasets import local_source, read_image_bytes
from tl_core.errors import ImageDecodeError, TLCoreError
from tl_core.escape import markdown as plain
from ui.cli import run_cli

THUMB = 112


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(source: str, name: str) -> bytes | None:
    """A small PNG of one dataset image, or ``None`` if it cannot be read."""
    data = read_image_bytes(source, name)
    if data is None:
        return None
    try:
        image, _ = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, draft_size=THUMB)
    except ImageDecodeError:
        return None
    image = ImageOps.pad(image, (THUMB, THUMB), color=(255, 255, 255))  # a tidy square grid
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@st.cache_data(show_spinner=False)
def _names_by_class(source: str, per_class: int) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for item in load_images(source).items:
        bucket = names.setdefault(item.label, [])
        if len(bucket) < per_class:
            bucket.append(item.name)
    return names


def class_thumbnails(source: str, class_names: list[str], per_class: int = 8) -> None:
    try:
        names = _names_by_class(source, per_class)
    except TLCoreError as err:
        st.error(plain(err))
        return
    for label in class_names:
        st.markdown(f"**{plain(label)}**")
        columns = st.columns(per_class)
        for column, name in zip(columns, names.get(label, [])):
            image = thumbnail(source, name)
            if image is not None:
                column.image(image, width=THUMB)


def prediction_tile(image: Image.Image | bytes | None, caption: str) -> None:
    """One picture with its caption, which may quote file and class names: shown as typed."""
    if image is None:
        st.caption(f"(image unavailable) {plain(caption)}")
    else:
        st.image(image, caption=plain(caption), width=160)


HEAT_VIEWS = {"picture": "The picture", "predicted": "Heat map: what made it predict that",
              "true": "Heat map: evidence for the true class"}


def mistakes_gallery(store, run: dict, mistakes: list[dict], can_compute: bool) -> None:
    """The most confident mistakes, as pictures or Grad-CAM overlays (stored by the run)."""
    folder = store.run_dir(run["id"]) / "gradcam"
    index = json.loads((folder / "index.json").read_text()) if (folder / "index.json").is_file() else {}
    if index:
        view = st.radio("Show", list(HEAT_VIEWS), format_func=HEAT_VIEWS.get, horizontal=True, key="heat_view",
                        help="Grad-CAM: red where the ConvNet's last feature maps pushed the class's score up.")
    else:
        view = "picture"
        if can_compute and st.button("Compute Grad-CAM heat maps"):
            with st.spinner("Computing heat maps..."):
                _, result = run_cli(["gradcam", run["id"], "--data-dir", str(store.data_dir)])
            if "error" in result:
                st.error(plain(result["error"]))
            elif not result.get("files"):
                st.warning("No heat map could be drawn: the run's test images could not be read.")
            else:
                st.rerun()
    columns = st.columns(4)
    source = (run.get("config") or {}).get("source", "")
    if any(view not in index.get(m["file"], {}) for m in mistakes):
        source = local_source(store, source)  # after a wiped disk: fetched from the artifacts location
    for position, mistake in enumerate(mistakes):
        entry = index.get(mistake["file"], {})
        image = (folder / entry[view]).read_bytes() if view in entry else thumbnail(source, mistake["file"])
        with columns[position % 4]:
            prediction_tile(
                image,
                f"{mistake['file']} — true {mistake['true']}, predicted {mistake['predicted']} ({mistake['probability']:.0%})",
            )
