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


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def start_app(data_dir: Path):
    """``streamlit run app.py`` on a free loopback port with its own data folder: ``(process, url)``,
    returned once the server answers its health check."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TL_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    return server, url
