"""Shared fixtures: tiny learnable image sets made at test time, an isolated store, ../shared."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# An idle worker keeps a TensorFlow process ready for the next run (tl_core.jobs.Standby), and the app
# starts a worker as soon as a dataset is loaded: dozens of test stores would each hold one for the
# worker's idle time. Off for the suite; the tests of that path turn it on for their own worker.
os.environ.setdefault("TL_WORKER_STANDBY", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights"
CLIPART8 = SHARED / "datasets" / "clipart8"
FASHION = SHARED / "datasets" / "fashion_mnist_2k"
MOBILENET_NOTOP = SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"

needs_shared_weights = pytest.mark.skipif(
    not MOBILENET_NOTOP.is_file(), reason="../shared/weights (real MobileNet ImageNet weights) is absent"
)
needs_clipart8 = pytest.mark.skipif(not CLIPART8.is_dir(), reason="../shared/datasets/clipart8 is absent")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="../shared/datasets/fashion_mnist_2k is absent")

TOY_COLORS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}


def toy_image(color: tuple[int, int, int], rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy background with a square of the class colour somewhere: learnable, not trivial."""
    pixels = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
    side = size // 2
    x0, y0 = rng.integers(0, size - side, 2)
    jitter = rng.integers(-25, 25, 3)
    pixels[y0 : y0 + side, x0 : x0 + side] = np.clip(np.array(color) + jitter, 0, 255)
    return Image.fromarray(pixels)


def make_toy_folder(root: Path, n_per_class: int = 14, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, color in TOY_COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            toy_image(color, rng, size).save(folder / f"{name}_{i:03d}.png")
    return root


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def zip_folder(folder: Path, extra: dict[str, bytes] | None = None, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wait_for_status(store, run_id: str, statuses: set[str], timeout: float = 240) -> dict:
    """The run once its status is one of ``statuses`` (polled), or an AssertionError after ``timeout``."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        run = store.get_run(run_id)
        if run["status"] in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {store.get_run(run_id)['status']} after {timeout} s")


@pytest.fixture(scope="session")
def toy_folder(tmp_path_factory) -> Path:
    return make_toy_folder(tmp_path_factory.mktemp("toy"))


@pytest.fixture()
def store(tmp_path, monkeypatch):
    from tl_core.store import RunStore

    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path / "data"))
    return RunStore(tmp_path / "data")


TEST_DATABASE_ENV = "TL_TEST_DATABASE_URL"


@pytest.fixture()
def postgres_url():
    """The URL of a new, empty PostgreSQL database for one test, dropped after it.

    It is made on the server of ``$TL_TEST_DATABASE_URL`` (a role allowed to create databases,
    e.g. ``postgresql://tl:tl@127.0.0.1:5432/postgres``; ``.ci/run`` starts one and sets it).
    """
    import secrets

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from tl_core.store import dispose_engines, parse_database_url

    admin_url = os.environ.get(TEST_DATABASE_ENV)
    if not admin_url:
        pytest.skip(f"{TEST_DATABASE_ENV} is unset: no PostgreSQL server to test against (.ci/run starts one)")
    name = f"tl_test_{secrets.token_hex(6)}"
    admin = create_engine(parse_database_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield parse_database_url(admin_url).set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def sigkill_after_epochs(worker, store, run_id: str, epochs: int, stage: str = "scratch", timeout: float = 180) -> int:
    """SIGKILL a training worker process once ``epochs`` epochs of ``stage`` are stored; returns
    how many epochs were stored when it died."""
    import signal
    import time

    try:
        deadline = time.time() + timeout
        while len(store.get_run(run_id)["epochs"].get(stage, [])) < epochs and time.time() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    return len(store.get_run(run_id)["epochs"][stage])
