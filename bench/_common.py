"""Helpers shared by the bench scripts: argument defaults and loading a dataset once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TL_WEIGHTS_DIR", str(REPO.parent / "shared" / "weights"))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clipart8"


def machine() -> str:
    from tl_core.hardware import describe_hardware

    return describe_hardware()
