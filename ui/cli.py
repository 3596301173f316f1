"""Engine jobs that need TensorFlow, run as ``python -m tl_core ... --json`` in a subprocess.

The Streamlit server never loads TensorFlow for them: its memory stays small, and on a GPU
machine it never holds GPU memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tl_core.jobs import REPO_ROOT, engine_env


def run_cli(args: list[str], timeout: float = 600) -> tuple[int, dict[str, Any]]:
    """``(exit code, the command's JSON result)``; the result is ``{"error": message}`` when it has none."""
    env = engine_env(CUDA_VISIBLE_DEVICES="")  # short jobs on the CPU: the GPU stays the training worker's
    try:
        proc = subprocess.run([sys.executable, "-m", "tl_core", *args, "--json", "--quiet"],
                              capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return -1, {"error": f"It took longer than {timeout:.0f} s and was stopped."}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if not isinstance(result, dict) or not result:
        result = {"error": (proc.stderr.strip().splitlines() or ["the command failed"])[-1]}
    return proc.returncode, result
