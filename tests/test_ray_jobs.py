"""Jobs on Ray (``TL_RAY_ADDRESS``): a real local Ray instance started by the test trains two runs
at once, each in its own Ray worker process, and both land in the shared store."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_toy_folder, wait_for_status

from tl_core import ray_jobs
from tl_core.config import TrainConfig
from tl_core.errors import ConfigError
from tl_core.jobs import engine_env, ensure_worker, queue_snapshot, resume, submit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is not installed (pip install -r requirements-dev.txt)")



def _ray_has_token_auth() -> bool:
    """Whether the installed Ray knows token authentication (found on disk: importing Ray here would
    fix its authentication mode before the fixtures set it)."""
    spec = importlib.util.find_spec("ray")
    return spec is not None and any((Path(p) / "_private" / "authentication").is_dir()
                                    for p in spec.submodule_search_locations or ())


FAST = TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _local_cluster(env: dict[str, str]):
    """A one-node Ray cluster on loopback with 2 CPUs and no GPU, in a process group of its own;
    yields its address. Stopping it kills that group only: other Ray clusters on the machine stay."""
    temp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    command = ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={temp}", "--object-store-memory=200000000"]
    log = Path(temp) / "start.log"
    with open(log, "wb") as out:  # a file, not a pipe: the cluster's daemons may hold it open
        started = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # every process of the cluster inherits this group
    try:
        assert started.wait(timeout=180) == 0, log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _cluster_env(**settings: str) -> dict[str, str]:
    """The engine's environment without any Ray authentication setting of the machine's own."""
    env = {k: v for k, v in engine_env().items() if not k.startswith("RAY_AUTH_")}
    return {**env, **settings}


@pytest.fixture(scope="module")
def ray_token(tmp_path_factory) -> Path:
    """A fresh authentication token in a temporary file (never the user's ``~/.ray``)."""
    path = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def ray_address(ray_token):
    """A cluster with token authentication (Ray's default) whose token this process sends.

    Ray reads the mode when it is first imported, so the settings come before any ``import ray`` here.
    """
    assert "ray" not in sys.modules, "Ray was imported before its authentication mode was set"
    settings = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_token)}
    previous = {name: os.environ.get(name) for name in (*settings, "RAY_AUTH_TOKEN")}
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
    os.environ.update(settings)
    try:
        with _local_cluster(_cluster_env(**settings)) as address:
            try:
                yield address
            finally:
                _disconnect()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _disconnect() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


_PROBE = (
    "from tl_core import ray_jobs\n"
    "ray = ray_jobs.connect()\n"
    "print('answer', ray.get(ray.remote(lambda: 41 + 1).remote()))\n"
)


def _probe(address: str, home: Path, **settings: str) -> subprocess.CompletedProcess:
    """The app's own connection (``ray_jobs.connect``) from a fresh process with an empty home."""
    env = _cluster_env(TL_RAY_ADDRESS=address, HOME=str(home), **settings)
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(not _ray_has_token_auth(), reason="this Ray has no token authentication")
def test_the_app_reaches_a_token_cluster_with_its_token_and_explains_a_missing_one(ray_address, ray_token, tmp_path):
    with_token = _probe(ray_address, tmp_path, RAY_AUTH_TOKEN=ray_token.read_text())
    assert "answer 42" in with_token.stdout, with_token.stdout + with_token.stderr
    from_file = _probe(ray_address, tmp_path, RAY_AUTH_TOKEN_PATH=str(ray_token))
    assert "answer 42" in from_file.stdout, from_file.stdout + from_file.stderr
    without = _probe(ray_address, tmp_path)
    assert without.returncode != 0 and "answer" not in without.stdout
    assert "Could not reach the Ray cluster" in without.stderr and "RAY_AUTH_TOKEN" in without.stderr


def test_the_app_reaches_a_cluster_without_authentication(tmp_path):
    with _local_cluster(_cluster_env(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))) as address:
        reached = _probe(address, tmp_path)
    assert "answer 42" in reached.stdout, reached.stdout + reached.stderr


@pytest.fixture
def on_ray(ray_address, monkeypatch):
    monkeypatch.setenv("TL_RAY_ADDRESS", ray_address)
    monkeypatch.delenv("TL_RAY_GPUS", raising=False)
    return ray_address


def test_gpus_per_job_follows_the_cluster_and_the_setting(monkeypatch):
    monkeypatch.delenv("TL_RAY_GPUS", raising=False)
    assert ray_jobs.gpus_per_job({"CPU": 8.0}) == 0
    assert ray_jobs.gpus_per_job({"CPU": 8.0, "GPU": 4.0}) == 1
    monkeypatch.setenv("TL_RAY_GPUS", "2")
    assert ray_jobs.gpus_per_job({"CPU": 8.0, "GPU": 4.0}) == 2
    monkeypatch.setenv("TL_RAY_GPUS", "many")
    with pytest.raises(ConfigError, match="TL_RAY_GPUS"):
        ray_jobs.gpus_per_job({})


def test_two_jobs_at_once_both_finish_in_the_shared_store(tmp_path, store, on_ray):
    root = make_toy_folder(tmp_path / "toy", n_per_class=10)
    first = submit(store, root, FAST, name="first")
    second = submit(store, root, TrainConfig(**{**FAST.to_dict(), "head": "ovr"}), name="second")
    assert ensure_worker(store) is False  # Ray runs the jobs: no local worker is started
    runs = [wait_for_status(store, run_id, {"succeeded", "failed", "cancelled"}, timeout=300) for run_id in (first, second)]
    for run in runs:
        assert run["status"] == "succeeded", run["error"]
        assert run["executor"] == "ray"
        assert run["metrics"]["test_accuracy"] > 0.5  # 3 colour classes: chance is 0.33
    # Two Ray worker processes, neither of them this one, training at the same time.
    pids = {run["owner_pid"] for run in runs}
    assert len(pids) == 2 and os.getpid() not in pids

    def span(run):
        stages = run["progress"]["stages"].values()
        return min(s["started_at"] for s in stages), max(s.get("finished_at", 0) for s in stages)

    (start_a, end_a), (start_b, end_b) = span(runs[0]), span(runs[1])
    assert start_a < end_b and start_b < end_a, "the two jobs did not overlap"
    assert queue_snapshot(store)["running"] == []


def test_a_ray_job_is_cancelled_through_the_store_and_resumed_on_ray(tmp_path, store, on_ray):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    long_config = TrainConfig(**{**FAST.to_dict(), "strategy": "scratch", "epochs": 200, "patience": 200})
    run_id = submit(store, root, long_config)
    wait_for_status(store, run_id, {"running"}, timeout=180)
    deadline = time.time() + 120
    while not store.get_run(run_id)["epochs"] and time.time() < deadline:
        time.sleep(0.5)  # at least one epoch done, so resume has a checkpoint to go on from
    store.request_cancel(run_id)
    cancelled = wait_for_status(store, run_id, {"cancelled", "failed", "succeeded"}, timeout=120)
    assert cancelled["status"] == "cancelled", cancelled["error"]
    done = sum(len(v) for v in cancelled["epochs"].values())
    assert 1 <= done < 200

    resume(store, run_id)
    assert store.get_run(run_id)["executor"] == "ray"
    wait_for_status(store, run_id, {"running"}, timeout=180)
    store.request_cancel(run_id)
    again = wait_for_status(store, run_id, {"cancelled", "failed", "succeeded"}, timeout=120)
    assert again["status"] == "cancelled", again["error"]
    epochs = [e["epoch"] for e in again["epochs"]["scratch"]] if "scratch" in again["epochs"] else []
    assert epochs == sorted(set(epochs))  # went on from its checkpoint: no epoch counted twice


def test_an_unreachable_cluster_fails_the_run_with_the_reason(tmp_path, store, monkeypatch):
    _disconnect()
    monkeypatch.setenv("TL_RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    root = make_toy_folder(tmp_path / "toy", n_per_class=4)
    run_id = submit(store, root, FAST)
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert "Could not reach the Ray cluster" in run["error"] and "TL_RAY_ADDRESS" in run["error"]
