"""The progress / cancel protocol and its Keras bridge, on a real (tiny) Keras model."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from tl_core.progress import (
    CancelToken,
    KerasProgressBridge,
    MultiProgress,
    NullProgress,
    ProgressListener,
    StageTimer,
)


class Recorder(NullProgress):
    def __init__(self, stop_after_batches: int | None = None):
        self.events = []
        self.batches = 0
        self.stop_after_batches = stop_after_batches

    def on_stage_start(self, stage, total):
        self.events.append(("start", stage, total))

    def on_step(self, stage, step, logs=None):
        if stage.endswith(".epoch"):
            self.batches += 1
        self.events.append(("step", stage, step, sorted(logs) if logs else None))

    def on_stage_end(self, stage, logs=None):
        self.events.append(("end", stage))

    def should_stop(self):
        return self.stop_after_batches is not None and self.batches >= self.stop_after_batches


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    return model, x, (x[:, 0] > 0).astype("int64")


def test_bridge_reports_stages_epochs_and_batches_in_order():
    model, x, y = _model()
    recorder = Recorder()
    bridge = KerasProgressBridge(recorder, "stage1", 2)
    model.fit(x, y, batch_size=10, epochs=2, validation_split=0.25, callbacks=[bridge], verbose=0)
    epochs = [e for e in recorder.events if e[:2] == ("step", "stage1")]
    assert recorder.events[0] == ("start", "stage1", 2) and recorder.events[-1] == ("end", "stage1")
    assert [e[2] for e in epochs] == [1, 2]
    assert epochs[0][3] == ["accuracy", "epoch", "loss", "val_accuracy", "val_loss"]
    assert ("start", "stage1.epoch", 3) in recorder.events  # 30 training rows / batch 10
    assert len(bridge.history) == 2


def test_a_stop_request_ends_fit_within_the_epoch():
    model, x, y = _model()
    recorder = Recorder(stop_after_batches=2)
    model.fit(x, y, batch_size=4, epochs=50, callbacks=[KerasProgressBridge(recorder, "scratch", 50)], verbose=0)
    assert recorder.batches == 2  # of the 10 batches of the first epoch


def test_listeners_compose():
    token, timer = CancelToken(), StageTimer()
    both = MultiProgress(NullProgress(), token, timer, None)
    assert isinstance(both, ProgressListener) and isinstance(token, ProgressListener)
    both.on_stage_start("extract", 10)
    both.on_stage_end("extract")
    assert not both.should_stop() and timer.seconds["extract"] >= 0
    token.cancel()
    assert both.should_stop()


def test_the_time_breakdown_splits_a_run_into_its_parts_in_order():
    from tl_core.progress import time_breakdown

    run = {"created_at": 100.0, "updated_at": 130.0, "progress": {
        "process_started_at": 102.0, "run_started_at": 106.0,
        "stages": {"head": {"started_at": 120.0, "finished_at": 128.0},
                   "extract": {"started_at": 107.0, "finished_at": 120.0},
                   "extract.epoch": {"started_at": 107.0, "finished_at": 108.0},  # a sub-stage: not a part
                   "explain": {"started_at": 128.0, "finished_at": 128.01}}}}  # too short to show
    parts = time_breakdown(run)
    assert [p for p, _ in parts] == ["waiting", "startup", "build", "extract", "head", "finish"]
    assert [s for _, s in parts] == pytest.approx([2.0, 4.0, 1.0, 13.0, 8.0, 1.99])
    assert sum(s for _, s in time_breakdown(run)) <= run["updated_at"] - run["created_at"]
    assert time_breakdown({"progress": {"stages": {}}}) == []  # a run from before timelines
    # The CLI imports TensorFlow, then creates its run: the breakdown starts when the run does.
    cli = {**run, "progress": {**run["progress"], "process_started_at": 95.0, "run_started_at": 101.0}}
    assert time_breakdown(cli)[0] == ("startup", 1.0)
    assert sum(s for _, s in time_breakdown(cli)) <= run["updated_at"] - run["created_at"]


def test_stages_that_ran_at_the_same_time_are_one_joint_part_and_never_counted_twice():
    from tl_core.charts import time_breakdown as chart
    from tl_core.progress import time_breakdown

    # Images decoded from 10 s to 20 s, the ConvNet extracting their features from 12 s to 23 s.
    run = {"created_at": 9.0, "updated_at": 30.0, "progress": {
        "process_started_at": 9.0, "run_started_at": 9.0,
        "stages": {"extract": {"started_at": 12.0, "finished_at": 23.0},
                   "decode": {"started_at": 10.0, "finished_at": 20.0},
                   "head": {"started_at": 23.5, "finished_at": 27.0},  # the split and the metrics between
                   "explain": {"started_at": 27.5, "finished_at": 28.0}}}}
    parts = time_breakdown(run)
    assert parts == [("build", 1.0), ("decode", 2.0), ("decode+extract", 8.0), ("extract", 3.0), ("head", 3.5),
                     ("explain", 0.5), ("between", 1.0), ("finish", 2.0)]
    assert sum(s for _, s in parts) == run["updated_at"] - run["created_at"]
    names = list(chart(parts).data[0].y)
    assert names[2] == "Decoding images while extracting features (overlapped)" and names[1] == "Decoding images"
    assert names[6] == "Between the stages (splitting, metrics, saving files)"
    # A pair without a title of its own is named from the stages' titles.
    other = time_breakdown({**run, "progress": {**run["progress"], "stages": {
        "head": {"started_at": 10.0, "finished_at": 20.0}, "explain": {"started_at": 15.0, "finished_at": 20.0}}}})
    assert ("head+explain", 5.0) in other
    assert "Fitting the linear head while Grad-CAM heat maps of the mistakes" in chart(other).data[0].y


def test_time_left_says_at_most_only_for_stages_early_stopping_can_end():
    from ui.run_view import _eta

    info = {"step": 2, "total": 4, "started_at": time.time() - 10}
    assert _eta(info, None).startswith(" · about ") and "early stopping" not in _eta(info, None)  # decoding
    assert _eta(info, None, early_stopping=True).endswith(" (at most: early stopping may end it sooner)")
