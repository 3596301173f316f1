"""The one progress-and-cancel protocol used by the app, the CLI and the job worker.

The engine reports through a :class:`ProgressListener`; it never prints. Stages are named
(``decode``, ``extract``, ``head``, ``stage1``, ``stage2``, ``scratch``, ``evaluate``); ``total``
is the number of steps (images, epochs) and each ``on_step`` says how many are done.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, runtime_checkable

EPOCH_STAGES = ("stage1", "stage2", "scratch")
STAGE_TITLES = {
    "decode": "Decoding images",
    "extract": "Extracting features (frozen ConvNet, once)",
    "head": "Fitting the linear head",
    "stage1": "Stage 1: new layers on the frozen ConvNet",
    "cache": "Caching activations below the unfrozen blocks (once)",
    "stage2": "Stage 2: fine-tuning the top blocks",
    "scratch": "Training from scratch",
    "evaluate": "Evaluating on the test split",
    "explain": "Grad-CAM heat maps of the mistakes",
}


@runtime_checkable
class ProgressListener(Protocol):
    """What an observer of a run implements. Every method must return quickly."""

    def on_stage_start(self, stage: str, total: int) -> None: ...

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None: ...

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None: ...

    def should_stop(self) -> bool: ...


class NullProgress:
    """A listener that ignores everything and never asks to stop."""

    def on_stage_start(self, stage: str, total: int) -> None:
        pass

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class CancelToken(NullProgress):
    """A listener whose only job is to carry a cancel request (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def should_stop(self) -> bool:
        return self._event.is_set()


class MultiProgress:
    """Fans events out to several listeners; stops when any of them asks to."""

    def __init__(self, *listeners: ProgressListener) -> None:
        self.listeners = [listener for listener in listeners if listener is not None]

    def on_stage_start(self, stage: str, total: int) -> None:
        for listener in self.listeners:
            listener.on_stage_start(stage, total)

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None:
        for listener in self.listeners:
            listener.on_step(stage, step, logs)

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        for listener in self.listeners:
            listener.on_stage_end(stage, logs)

    def should_stop(self) -> bool:
        return any(listener.should_stop() for listener in self.listeners)


class StageTimer(NullProgress):
    """Records wall seconds per stage (used for the run's timing metrics)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def on_stage_start(self, stage: str, total: int) -> None:
        self._started[stage] = time.perf_counter()

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        if stage in self._started:
            elapsed = time.perf_counter() - self._started.pop(stage)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed


def __getattr__(name: str):
    # The Keras bridge is built on first use, so the protocol can be imported (by the app, the
    # queue, a starting worker) without paying TensorFlow's import time.
    if name == "KerasProgressBridge":
        globals()[name] = _make_keras_bridge()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_keras_bridge():
    import keras

    class KerasProgressBridge(keras.callbacks.Callback):
        """Turns Keras ``fit`` events into protocol events, and a stop request into ``stop_training``.

        One ``on_step`` per epoch carries the epoch's logs (loss, accuracy, val_loss, val_accuracy);
        within an epoch, a sub-stage ``<stage>.epoch`` counts its batches (``total`` = steps per epoch,
        0 when Keras does not know it yet, as in the first epoch over a ``tf.data`` pipeline).
        The stop request is also checked after each batch so cancelling takes effect within an epoch;
        overriding a batch hook makes Keras call it synchronously, which is what we want here.
        """

        def __init__(self, listener: ProgressListener, stage: str, total_epochs: int) -> None:
            super().__init__()
            self.listener = listener
            self.stage = stage
            self.total_epochs = total_epochs
            self.history: list[dict[str, float]] = []

        def on_train_begin(self, logs=None):
            self.listener.on_stage_start(self.stage, self.total_epochs)

        def on_epoch_begin(self, epoch, logs=None):
            self.listener.on_stage_start(f"{self.stage}.epoch", int(self.params.get("steps") or 0))

        def on_train_batch_end(self, batch, logs=None):
            self.listener.on_step(f"{self.stage}.epoch", batch + 1, None)
            if self.listener.should_stop():
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.listener.on_stage_end(f"{self.stage}.epoch", None)
            clean = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
            clean["epoch"] = epoch + 1
            self.history.append(clean)
            self.listener.on_step(self.stage, epoch + 1, clean)
            if self.listener.should_stop():
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.listener.on_stage_end(self.stage, self.history[-1] if self.history else {})

    return KerasProgressBridge


# What each part of a run's timeline is called in its breakdown, beside the stages' own titles.
TIMELINE_TITLES = {
    "waiting": "Waiting for the worker (queue, worker start, process start)",
    "startup": "Starting TensorFlow (imports)",
    "build": "Building the model (weights)",
    "finish": "Saving the model and the results",
    "decode+extract": "Decoding images while extracting features (overlapped)",
    "between": "Between the stages (splitting, metrics, saving files)",
}


def time_breakdown(run: dict[str, Any]) -> list[tuple[str, float]]:
    """Where a finished run's time went: ``[(part, seconds), ...]`` in the order they happened.

    From the run's stored progress snapshot (each stage's start and end, the run's and its process's
    start) and its ``created_at`` / ``updated_at``: waiting for the worker, starting TensorFlow,
    building the model, each stage (:data:`STAGE_TITLES`), and saving. The parts never overlap: stages
    that ran at the same time make one joint part (``"decode+extract"``) and the time between stages is
    one part, so they add up to the run's time from its queueing. Parts of no measurable length are left
    out; a run without these records (from an older version) has an empty breakdown.
    """
    progress = run.get("progress") or {}
    stages = {k: v for k, v in (progress.get("stages") or {}).items()
              if not k.endswith(".epoch") and "started_at" in v and "finished_at" in v}
    run_started = progress.get("run_started_at")
    if not stages or run_started is None:
        return []
    # The run's time starts when it was queued: a process that started before (the CLI's, which
    # imports TensorFlow and then creates the run) counts from then, as the run's duration does.
    created = run.get("created_at") or run_started
    process_started = min(max(progress.get("process_started_at") or run_started, created), run_started)
    first = min(v["started_at"] for v in stages.values())
    last = max(v["finished_at"] for v in stages.values())
    parts = [("waiting", process_started - created),
             ("startup", run_started - process_started), ("build", first - run_started)]
    parts += _stage_parts(stages)
    parts.append(("finish", (run.get("updated_at") or last) - last))
    return [(part, seconds) for part, seconds in parts if seconds >= 0.05]


def _stage_parts(stages: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """Each instant from the first stage's start to the last one's end counted once: stages that ran at
    the same time (images decoded while the ConvNet extracts the features of the ones before) make a
    joint part, ``"decode+extract"``; the time between stages is ``"between"``."""
    order = sorted(stages, key=lambda stage: (stages[stage]["started_at"], stages[stage]["finished_at"]))
    edges = sorted({t for info in stages.values() for t in (info["started_at"], info["finished_at"])})
    seconds: dict[str, float] = {}
    for start, end in zip(edges, edges[1:]):
        active = [s for s in order if stages[s]["started_at"] <= start and stages[s]["finished_at"] >= end]
        part = "+".join(active) if active else "between"  # no stage: splitting, metrics, saving files
        seconds[part] = seconds.get(part, 0.0) + end - start
    between = seconds.pop("between", 0.0)
    return [*seconds.items(), ("between", between)]  # in the order each part first ran; the gaps last

