"""Executing one claimed run in this process: the local worker's child processes (:mod:`tl_core.jobs`)
and Ray jobs (:mod:`tl_core.ray_jobs`) both call it, so progress, cancel and results go through the
same store."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from tl_core.config import DataConfig, TrainConfig
from tl_core.datasets import local_source
from tl_core.progress import NullProgress
from tl_core.store import RunStore


class WorkerProgress(NullProgress):
    """Stops a run when its cancel flag is set in the store (polled at most twice a second)."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self._checked, self._stop = 0.0, False

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._checked >= 0.5:
            self._checked = now
            self._stop = self.store.is_cancel_requested(self.run_id)
        return self._stop


def train_claimed(store: RunStore, run_id: str) -> None:
    """Train a run this process has claimed, from the settings stored with it."""
    from tl_core.runner import run_training  # TensorFlow: only in the process that trains

    payload = store.get_run(run_id)["config"]
    store.ensure_local(run_id)  # a resumed run's checkpoints, from the artifacts location if need be
    run_training(
        local_source(store, payload["source"]),  # a saved upload comes back from the artifacts location
        TrainConfig.from_dict(payload["train"]),
        DataConfig.stored(payload.get("data")),
        store=store,
        progress=WorkerProgress(store, run_id),
        run_id=run_id,
    )


class _WorkerOwnedStore(RunStore):
    """The store as a worker's child process uses it: the worker that claimed the run stays its owner.

    So a killed worker fails its run at once, whether or not its dying child has been reaped yet.
    """

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        if status != "running":  # the run is running already, owned by the worker
            super().set_status(run_id, status, error)


def train_for_worker(data_dir: str, run_id: str, *, worker_pid: int) -> str:
    """Train, in this fresh process, a run the worker process ``worker_pid`` claimed; returns its final status.

    This process ends as soon as the worker does (the worker's successor fails the run as interrupted).
    """
    _end_with_parent(worker_pid)
    store = _WorkerOwnedStore(data_dir)
    train_claimed(store, run_id)
    return store.get_run(run_id)["status"]


def standby_for_worker(data_dir: str, *, worker_pid: int) -> str:
    """Wait, TensorFlow imported, for the run id the worker ``worker_pid`` sends on standard input, then
    train it as :func:`train_for_worker` does; ``"idle"`` when the input ends without one."""
    _end_with_parent(worker_pid)  # first: a worker killed during the imports takes this process along
    import tl_core
    import tl_core.runner  # noqa: F401 - TensorFlow and Keras: what this process is started ahead for

    _probe_default_precision(data_dir)
    run_id = sys.stdin.readline().strip()
    if not run_id:
        return "idle"
    tl_core.PROCESS_STARTED_AT = time.time()  # the run's timeline starts now: the imports were paid ahead
    store = _WorkerOwnedStore(data_dir)
    train_claimed(store, run_id)
    return store.get_run(run_id)["status"]


def _probe_default_precision(data_dir: str) -> None:
    """While waiting: measure (once per machine and data folder) whether the default backbone runs
    faster in bfloat16, so the first run does not pay :func:`tl_core.precision.choose_precision`'s probe."""
    from tl_core import backbones
    from tl_core.precision import bf16_supported, choose_precision

    if not bf16_supported():
        return
    try:
        config = TrainConfig()
        spec = backbones.get_spec(config.backbone)
        weights = backbones.resolve_weights(spec, config.weights, config.seed)
        model = backbones.build_feature_model(spec, backbones.build_base(spec, weights, spec.input_size, config.seed),
                                              spec.input_size)
        choose_precision(config.precision, model, backbone=spec.name, image_size=spec.input_size,
                         cache_dir=RunStore(data_dir).cache_dir)
    except Exception:  # noqa: BLE001 - no weights yet, or anything else: the run will measure it then
        pass


_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):  # the kernel kills this process when its parent dies
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # it died before that
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def execute_run(store: RunStore, run_id: str) -> str:
    """Claim one queued run and train it in this process; returns its final status.

    A run that is no longer queued (cancelled before it started, or taken by someone else) is left
    alone and its current status returned. Used by Ray jobs; the local worker claims the same way.
    """
    if not store.claim_run(run_id):
        return store.get_run(run_id)["status"]
    train_claimed(store, run_id)
    return store.get_run(run_id)["status"]
