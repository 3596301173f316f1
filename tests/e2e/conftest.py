"""A real app server and a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import MOBILENET_NOTOP, REPO, SHARED_WEIGHTS

SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(data_dir: Path, extra_env: dict[str, str] | None = None, *, weights: bool = True):
    """``streamlit run app.py`` on a free loopback port with its own data folder; yields its URL.
    Without ``weights`` the server has no ImageNet weights at all: no ``TL_WEIGHTS_DIR``, an empty
    Keras cache and ``TL_OFFLINE=1`` (as on a machine that cannot download them)."""
    port = _free_port()
    env = {**os.environ, "TL_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **(extra_env or {})}
    if not weights:
        env.pop("TL_WEIGHTS_DIR", None)
        env.update(TL_OFFLINE="1", KERAS_HOME=str(data_dir / "keras-home"))
    elif MOBILENET_NOTOP.is_file():  # real weights on disk: the Strategy page measures the data itself
        env["TL_WEIGHTS_DIR"] = str(SHARED_WEIGHTS)
    log = open(data_dir / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("the Streamlit server did not start: " + (data_dir / "server.log").read_text()[-2000:])
    yield {"url": url, "data_dir": data_dir}
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    # The worker process lives in its own session; stop it too.
    subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {data_dir}"], check=False)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app as someone runs it on their own machine."""
    yield from _serve(tmp_path_factory.mktemp("e2e-data"))


@pytest.fixture(scope="module")
def hosted_server(tmp_path_factory):
    """The app as deployed publicly (``TL_HOSTED=1``): a private workspace per visitor."""
    data_dir = tmp_path_factory.mktemp("e2e-hosted")
    yield from _serve(data_dir, {"TL_HOSTED": "1", "TL_RENDER_LOG": str(data_dir / "renders.jsonl")})


@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
