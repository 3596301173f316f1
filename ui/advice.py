"""The advisor's measurements for the Strategy page: run in a subprocess, kept on disk per dataset.

The measurement needs TensorFlow and a pretrained backbone; it runs as ``python -m tl_core
advise`` (``ui.cli``), out of the Streamlit server process.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tl_core.advisor import Recommendation
from tl_core.backbones import BACKBONES, local_weights_file
from tl_core.fsutil import write_json_atomic
from tl_core.store import RunStore
from ui.cli import run_cli


def _cache_file(store: RunStore, path: str, stamp: float, backbone: str) -> Path:
    key = hashlib.sha256(f"{Path(path).resolve()}|{stamp}|{backbone}|{os.environ.get('TL_WEIGHTS_DIR', '')}".encode())
    return store.data_dir / "advice" / f"{key.hexdigest()[:24]}.json"


def cached_advice(store: RunStore, path: str, stamp: float, backbone: str) -> dict[str, Any] | None:
    file = _cache_file(store, path, stamp, backbone)
    return json.loads(file.read_text()) if file.is_file() else None


def weights_on_disk(backbone: str) -> bool:
    """True when measuring needs no download, of the backbone or of its ImageNet classifier (so the
    page can measure without asking)."""
    spec = BACKBONES[backbone]
    return local_weights_file(spec.weights_files) is not None and local_weights_file(spec.top_weights_files) is not None


def measure(store: RunStore, path: str, stamp: float, backbone: str, timeout: float = 600) -> dict[str, Any]:
    """Run the advisor on the dataset at ``path``; the result, or ``{"error": message}``."""
    code, result = run_cli(["advise", "--data", path, "--backbone", backbone], timeout)
    if code != 0 or "error" in result:
        return {"error": result.get("error") or "the advisor failed"}
    target = _cache_file(store, path, stamp, backbone)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, result)
    return result


def as_recommendation(advice: dict[str, Any]) -> Recommendation:
    """The Train page's starting settings, from a measured advice."""
    measurements = {k: advice[k] for k in ("n_images", "n_classes", "min_per_class", "median_per_class", "similarity")}
    return Recommendation(size=advice["size"], domain=advice["domain"], strategy=advice["strategy"], cell=advice["cell"],
                          settings=advice["settings"], reasons=advice["reasons"],
                          measurements={**measurements, **advice["measurements"], "parts": advice["similarity_parts"]})
