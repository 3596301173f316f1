"""Jobs on Ray (``TL_RAY_ADDRESS``): a real local Ray instance started by the test trains two runs
at once, each in its own Ray worker process, and both land in the shared store."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import make_toy_folder, wait_for_status

from tl_core import ray_jobs
from tl_core.config import TrainConfig
from tl_core.errors import ConfigError
from tl_core.jobs import engine_env, ensure_worker, queue_snapshot, resume, submit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is not installed (pip install -r requirements-dev.txt)")

FAST = TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A one-node Ray cluster with 2 CPUs and no GPU, started and stopped by this module."""
    # Token authentication, Ray's default: `ray start` writes the token, this process sends it. Ray
    # reads the mode when it is first imported, so this comes before any `import ray` here.
    assert "ray" not in sys.modules, "Ray was imported before its authentication mode was set"
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")  # Ray's socket paths must stay short
    command = ["ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
               "--object-store-memory=200000000"]
    started = subprocess.run(command, env=engine_env(), capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _disconnect()
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


def _disconnect() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
