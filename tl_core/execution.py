"""Executing one claimed run in this process: the local worker (:mod:`tl_core.jobs`) and Ray jobs
(:mod:`tl_core.ray_jobs`) both call it, so progress, cancel and results go through the same store."""

from __future__ import annotations

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
    run_training(
        local_source(store, payload["source"]),  # a saved upload comes back from the artifacts location
        TrainConfig.from_dict(payload["train"]),
        DataConfig(**payload.get("data", {})),
        store=store,
        progress=WorkerProgress(store, run_id),
        run_id=run_id,
    )


def execute_run(store: RunStore, run_id: str) -> str:
    """Claim one queued run and train it in this process; returns its final status.

    A run that is no longer queued (cancelled before it started, or taken by someone else) is left
    alone and its current status returned. Used by Ray jobs; the local worker claims the same way.
    """
    if not store.claim_run(run_id):
        return store.get_run(run_id)["status"]
    train_claimed(store, run_id)
    return store.get_run(run_id)["status"]
