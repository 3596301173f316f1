"""What a job trains on, and GPU settings: mixed precision and XLA where they help.

``describe_machine`` asks the NVIDIA driver (no TensorFlow: the web server stays light and never
touches GPU memory); ``describe_hardware`` asks TensorFlow, in the process that trains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache


@lru_cache(maxsize=1)
def driver_gpus() -> tuple[str, ...]:
    """GPU names from ``nvidia-smi``, or none."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def describe_machine() -> str:
    """``CPU (n cores)`` or the GPU name(s) the driver reports, without importing TensorFlow."""
    gpus = driver_gpus()
    return ", ".join(gpus) if gpus else f"CPU ({os.cpu_count()} cores)"


def describe_hardware() -> str:
    """``CPU (n cores)`` or the GPU name(s) TensorFlow will train on."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({os.cpu_count()} cores)"
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except (RuntimeError, ValueError):
            names.append(gpu.name)
    return ", ".join(names)


# On a CPU a forward pass is as fast in batches of 16 as of 32, and its activations take half the
# memory (fine-tuning MobileNetV2 at 224 px: the worker peaks at 1.56 GB instead of 1.83 GB).
CPU_INFERENCE_BATCH = 16


def inference_batch(batch_size: int) -> int:
    """Images per forward pass of a frozen or evaluated network: the training batch on a GPU,
    at most :data:`CPU_INFERENCE_BATCH` on a CPU."""
    import tensorflow as tf

    return batch_size if tf.config.list_physical_devices("GPU") else min(batch_size, CPU_INFERENCE_BATCH)


def keep_off_gpu() -> None:
    """Hide GPUs from TensorFlow in this process (the web server), before it first uses one.

    The server only runs small predictions; the training worker, another process, takes the GPU
    and its memory. Too late once TensorFlow has initialised its devices: then nothing changes.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass


def use_acceleration(enabled: bool) -> list[str]:
    """Turn mixed precision on or off for the models built next; what was turned on.

    On when ``enabled`` and TensorFlow sees a GPU (or ``TL_FORCE_ACCELERATION=1``, for tests on a
    CPU): float16 compute with float32 weights (``mixed_float16``); XLA compilation goes with it
    (:func:`jit_compile`). On a CPU both cost more than they save, so they stay off.
    """
    import keras
    import tensorflow as tf

    on = enabled and (bool(tf.config.list_physical_devices("GPU")) or os.environ.get("TL_FORCE_ACCELERATION") == "1")
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    return ["mixed precision (float16 compute, float32 weights)", "XLA compilation"] if on else []


def jit_compile() -> bool:
    """Compile training steps with XLA: together with mixed precision (see :func:`use_acceleration`)."""
    import keras

    return keras.mixed_precision.global_policy().name == "mixed_float16"


def distribution_strategy():
    """The ``tf.distribute`` strategy a run trains under.

    - ``TF_CONFIG`` set: ``MultiWorkerMirroredStrategy`` (several machines, one job; see the README).
    - Several GPUs: ``MirroredStrategy`` over all of them (one copy of the model per GPU, gradients
      summed across them each step).
    - Otherwise TensorFlow's default strategy (one device).

    ``TL_DISTRIBUTE=off`` turns mirroring off; ``TL_DISTRIBUTE=all`` mirrors over every logical
    device, CPUs included: a CPU split into logical devices runs the same code path as several
    GPUs (the tests use it).
    """
    import tensorflow as tf

    mode = os.environ.get("TL_DISTRIBUTE", "auto").strip().lower()
    if mode == "off":
        return tf.distribute.get_strategy()
    if os.environ.get("TF_CONFIG"):
        _patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if mode == "all" and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in cpus])
    return tf.distribute.get_strategy()


_PATCHED = False


def _patch_keras_for_multi_worker() -> None:
    """Let Keras 3's ``fit`` train under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).

    Keras 3.x fails there in two places, both only under a multi-worker strategy: building the
    model from a distributed batch (it all-reduces the *input* batch across machines: "Attempt to
    convert a value (PerReplica...)"), and averaging the step's scalar loss and metrics with
    ``axis=0`` ("Invalid reduction dimension 0"). Build from this worker's own batch instead, and
    average scalars without an axis. The reduction is unchanged for one device and
    ``MirroredStrategy``; the build from a local batch, installed for the rest of the process, gives
    the same shapes under any strategy.
    """
    global _PATCHED
    if _PATCHED:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if not all(hasattr(trainer, name) for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker")):
        return  # a Keras that no longer has these internals: nothing to patch
    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if not (trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean")):
            return original_reduce(values, strategy, reduction)

        def mean(value):
            local = strategy.experimental_local_results(value)[0]
            return strategy.reduce("MEAN", value, axis=None if local.shape.rank == 0 else 0)

        return tf.nest.map_structure(mean, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    next(batches),
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _PATCHED = True


def process_memory(field: str = "VmRSS", pid: int | str = "self") -> int:
    """A process's memory in bytes from ``/proc/<pid>/status`` (Linux): ``VmRSS`` (resident now) or
    ``VmHWM`` (its peak so far). 0 when the process is gone or the field is missing (not Linux).

    The benches and the memory tests measure with it; ``/proc/self/clear_refs`` (write ``5``) resets
    the peak to now.
    """
    try:
        for line in open(f"/proc/{pid}/status").read().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
