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
                     epochs=8, fine_tune_epochs=2, unfreeze_blocks=1, patience=8, start_from_probe=False)
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_worker_processes_train_one_job_from_tf_config(toy_folder, tmp_path):
    """The README's two-machine recipe, on one machine: two `python -m tl_core train` processes with
    the same TF_CONFIG cluster (MultiWorkerMirroredStrategy) train in lockstep to the same weights."""
    import keras
    import numpy as np

    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    command = [sys.executable, "-m", "tl_core", "train", "--data", str(toy_folder), "--strategy", "finetune",
               "--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "8",
               "--epochs", "4", "--fine-tune-epochs", "2", "--quiet", "--json"]
    workers = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TL_DATA_DIR": str(tmp_path / f"worker{index}"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        env.pop("TL_DISTRIBUTE", None)
        workers.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["status"] for r in results] == ["succeeded", "succeeded"], [r["error"] for r in results]
    metrics = [json.loads((tmp_path / f"worker{i}" / "runs" / r["run_id"] / "metrics.json").read_text())
               for i, r in enumerate(results)]
    for m in metrics:
        assert m["distribution"]["replicas"] == 2 and m["distribution"]["global_batch"] == 16
        assert m["test_accuracy"] >= 0.6  # 3 classes: chance is 0.33
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    models = [keras.saving.load_model(r["model_path"]) for r in results]
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)  # gradients all-reduced across both processes
