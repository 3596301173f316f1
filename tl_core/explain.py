"""Heat maps of a finished run's mistakes: the run's images and model in, Grad-CAM overlays out.

Grad-CAM itself is :mod:`tl_core.gradcam` (an algorithm on a model and pixels); this module finds
the run's most confident test mistakes, reads their images as training did, and writes the overlays
the Result page shows. The runner calls it after training; ``python -m tl_core gradcam`` later.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_core.config import DataConfig
from tl_core.data import load_images, prepare_image
from tl_core.errors import DataError, TLCoreError
from tl_core.fsutil import write_json_atomic
from tl_core.gradcam import grad_cams, overlay
from tl_core.model_files import load_model_file, model_file


def explain_mistakes(run: dict, folder, max_side: int = 256, model=None, items: dict | None = None) -> list:
    """Grad-CAM overlays of a run's most confident test mistakes, for the predicted and the true class.

    Written to ``<folder>/gradcam/<n>-predicted.png`` and ``<n>-true.png`` with ``index.json``
    (``{file: {"predicted": png, "true": png}}``), so the Result page shows them without loading
    TensorFlow. ``model`` and ``items`` (the dataset's ``ImageItem`` by name): what the caller
    already holds (the runner); otherwise the model is loaded from its file and the items are
    listed from the run's source. Returns the files written.
    """
    metrics = run.get("metrics") or {}
    mistakes = metrics.get("top_mistakes") or []
    out = Path(folder) / "gradcam"
    if not mistakes:
        return []
    config = run.get("config") or {}
    try:
        data_config = DataConfig.stored(config.get("data"))
        if items is None:  # a folder or a zip: the same loader training used
            items = {item.name: item for item in load_images(config["source"], data_config).items}
    except (TLCoreError, OSError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"The run's images cannot be read ({err}), so no heat map can be drawn.") from err
    if model is None:
        path = model_file(run)
        if path is None:
            return []
        model = load_model_file(path)
    classes = {name: i for i, name in enumerate(metrics["class_names"])}
    size = metrics["image_size"]
    pictures, pixels, kept = [], [], []
    for mistake in mistakes:
        item = items.get(mistake["file"])
        try:
            data = item.read_bytes() if item else None
            if data is None:
                continue
            model_input, picture = prepare_image(data, size, data_config.max_pixels, data_config.resize)  # as training decoded it
        except (TLCoreError, OSError):
            continue  # this picture only: the other heat maps are still drawn
        picture.thumbnail((max_side, max_side))
        pictures.append(picture)
        pixels.append(model_input)
        kept.append(mistake)
    if not kept:
        return []
    out.mkdir(parents=True, exist_ok=True)
    x = np.stack(pixels)
    (predicted, true), _ = grad_cams(model, x, [[classes[m[which]] for m in kept] for which in ("predicted", "true")])
    maps = {"predicted": predicted, "true": true}
    index, written = {}, []
    for n, (mistake, picture) in enumerate(zip(kept, pictures)):
        entry = {}
        for which, cams in maps.items():
            target = out / f"{n}-{which}.png"
            overlay(picture, cams[n]).save(target)
            entry[which] = target.name
            written.append(target)
        index[mistake["file"]] = entry
    write_json_atomic(out / "index.json", index)
    return written
