"""Image grids: class thumbnails and galleries of predictions."""

from __future__ import annotations

import io
import json
import posixpath

import streamlit as st
import numpy as np
from PIL import Image, ImageOps

from tl_core.config import DEFAULT_MAX_PIXELS
from tl_core.data import decode_image, load_images
from tl_core.datasets import local_source, read_image_bytes
from tl_core.errors import ImageDecodeError, TLCoreError
from tl_core.escape import markdown as plain
from tl_core.gradcam import colorize
from ui.cli import run_cli

THUMB = 112
LARGE = 512  # the side of a picture seen larger
NAME_CHARS = 22  # a file name shown under a picture: longer ones lose their middle


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(source: str, name: str, side: int = THUMB) -> bytes | None:
    """A square PNG of one dataset image, ``side`` pixels wide, or ``None`` if it cannot be read."""
    data = read_image_bytes(source, name)
    if data is None:
        return None
    try:
        image, _ = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, draft_size=side)
    except ImageDecodeError:
        return None
    return _square_png(image, side)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _square_png(image: Image.Image, side: int) -> bytes:
    """``image`` fitted into a white ``side`` x ``side`` square (a tidy grid), as PNG bytes."""
    return _png(ImageOps.pad(image.convert("RGB"), (side, side), color=(255, 255, 255)))


@st.cache_data(show_spinner=False, max_entries=200)
def square(png: bytes, side: int = 160) -> bytes:
    """A stored picture (a heat map keeps its picture's shape) fitted into a square for the grid."""
    return _square_png(Image.open(io.BytesIO(png)), side)


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


def short_name(path: str, limit: int = NAME_CHARS) -> str:
    """A file's name without its folders, its middle cut to an ellipsis past ``limit`` characters
    (``Dscf0042_holiday….jpeg``): the start and the extension stay readable."""
    name = posixpath.basename(path.replace("\\", "/")) or path
    if len(name) <= limit:
        return name
    stem, ext = posixpath.splitext(name)
    keep = max(limit - len(ext) - 1, 4)
    return f"{stem[: keep - keep // 3]}…{stem[len(stem) - keep // 3:] if keep // 3 else ''}{ext}"


@st.cache_data(show_spinner=False)
def _legend_png() -> bytes:
    return _png(Image.fromarray(colorize(np.tile(np.linspace(0.0, 1.0, 240), (14, 1)))))


def heat_legend() -> None:
    """The colour scale of the Grad-CAM heat maps: a gradient from no evidence to the most."""
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.image(_legend_png(), width=240)
    right.caption("Heat map colours: blue = little evidence for the class, red = the most evidence "
                  "(relative within each picture).")


def zoom(image: Image.Image | bytes, name: str, label: str = "Larger") -> None:
    """A button that opens the picture larger (the grid shows it small), its whole file name under it."""
    with st.popover(label, icon=":material/zoom_in:", type="tertiary"):
        st.image(image, width=LARGE)
        st.caption(plain(name))


def prediction_tile(image: Image.Image | bytes | None, mistake: dict,
                    large: Image.Image | bytes | None = None) -> None:
    """One mistake: its picture, what it is and what the model said on one line, and its file name,
    shortened (the whole name in its tooltip). File and class names are shown as typed."""
    if image is None:
        st.caption("(image unavailable)")
    else:
        st.image(image, width=160)
    st.caption(f"{plain(mistake['true'])} → **{plain(mistake['predicted'])}** ({mistake['probability']:.0%})")
    st.caption(plain(short_name(mistake["file"])), help=plain(mistake["file"]))
    if large is not None:
        zoom(large, mistake["file"])


HEAT_VIEWS = {"picture": "The picture", "predicted": "Heat map: what made it predict that",
              "true": "Heat map: evidence for the true class"}


def mistakes_gallery(store, run: dict, mistakes: list[dict], can_compute: bool) -> None:
    """The most confident mistakes, as pictures or Grad-CAM overlays (stored by the run)."""
    folder = store.run_dir(run["id"]) / "gradcam"
    index = json.loads((folder / "index.json").read_text()) if (folder / "index.json").is_file() else {}
    if index:
        view = st.radio("Show", list(HEAT_VIEWS), format_func=HEAT_VIEWS.get, horizontal=True, key="heat_view",
                        help="Grad-CAM: red where the ConvNet's last feature maps pushed the class's score up.")
        if view != "picture":
            heat_legend()
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
    st.caption("Under each picture: its true class → **the class the model predicted** (its probability), "
               "and its file name (the whole name on hovering the ?).")
    columns = st.columns(4)
    source = (run.get("config") or {}).get("source", "")
    if any(view not in index.get(m["file"], {}) for m in mistakes):
        source = local_source(store, source)  # after a wiped disk: fetched from the artifacts location
    for position, mistake in enumerate(mistakes):
        entry = index.get(mistake["file"], {})
        if view in entry:  # a stored heat map (up to 256 px): the same file, small and larger
            large = (folder / entry[view]).read_bytes()
            image = square(large)
        else:
            image, large = thumbnail(source, mistake["file"]), thumbnail(source, mistake["file"], LARGE)
        with columns[position % 4]:
            prediction_tile(image, mistake, large)
