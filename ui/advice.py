"""The advisor's measurements for the Strategy page: run in a subprocess, kept on disk per dataset.

The measurement needs TensorFlow and a pretrained backbone; running it as
``python -m tl_core advise`` keeps both out of the Streamlit server process (its memory stays
small, and on a GPU machine the server never holds GPU memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tl_core.advisor import Recommendation
from tl_core.backbones import BACKBONES, local_weights_file
from tl_core.store import RunStore, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tl_core", "advise", "--data", path, "--backbone", backbone, "--json", "--quiet"],
            capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"The measurement took longer than {timeout:.0f} s and was stopped."}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or "error" in result or not result:
        return {"error": result.get("error") or (proc.stderr.strip().splitlines() or ["the advisor failed"])[-1]}
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
