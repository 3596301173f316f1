"""The distributed training path, on this CPU split into two logical devices (like two GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import json, os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tl_core.config import TrainConfig
from tl_core.runner import run_training
from tl_core.store import RunStore
config = TrainConfig(strategy=sys.argv[3], backbone="vgg16", weights="none", image_size=32, batch_size=8,
                     epochs=8, fine_tune_epochs=2, unfreeze_blocks=1, patience=8)
run = run_training(sys.argv[1], config, store=RunStore(sys.argv[2]))
assert run["status"] == "succeeded", run["error"]
print(json.dumps({"accuracy": run["metrics"]["test_accuracy"], "distribution": run["metrics"]["distribution"],
                  "n_test": run["metrics"]["n_test"], "notes": run["metrics"]["notes"]}))
"""


def _train(folder, data_dir, mode: str, strategy: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TL_DISTRIBUTE": mode}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(data_dir), strategy], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mirrored_training_on_two_devices_matches_one_device(toy_folder, tmp_path):
    # Two-stage fine-tuning: both stages are Keras fits, run under the strategy.
    mirrored = _train(toy_folder, tmp_path / "mirrored", "all", "finetune")
    single = _train(toy_folder, tmp_path / "single", "off", "finetune")
    assert mirrored["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2, "global_batch": 16}
    assert single["distribution"]["replicas"] == 1
    assert any("Trained on 2 devices" in note for note in mirrored["notes"])
    # The same accuracy, within one test image, and clearly above chance (3 classes).
    assert abs(mirrored["accuracy"] - single["accuracy"]) <= 1 / mirrored["n_test"] + 1e-9, (mirrored, single)
    assert min(mirrored["accuracy"], single["accuracy"]) >= 0.6, (mirrored, single)
