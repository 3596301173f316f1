"""Datasets larger than memory: decoding and training read and write memory-mapped files.

Each test runs the work in a fresh Python process and compares that process's peak resident
memory during the work (``VmHWM``, reset just before it) with its resident memory just before.
6,000 small PNGs decoded at 160 px make 461 MB of pixels; the growth must stay under 40% of that.
Writing them into the memory-mapped cache holds a few hundred decoded images plus at most
``data.RELEASE_BYTES`` (32 MB) of written pages; reading them back batch by batch (file reads,
not the mapping) holds the batches in flight: about 40 MB each here, whatever the number of
images. The earlier implementation fails both bounds: decoding into a list then
``np.stack`` held the pixels twice (922 MB), and ``tf.data.Dataset.from_tensor_slices`` copied
them all into a tensor (461 MB). Linux only (``/proc``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

N_IMAGES, SIZE = 6000, 160
DECODED_BYTES = N_IMAGES * SIZE * SIZE * 3
MAX_GROWTH = 0.4 * DECODED_BYTES  # 184 MB

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")

PRELUDE = """
import json, sys
from pathlib import Path
import numpy as np
from tl_core import data

from tl_core.hardware import process_memory as memory

def start():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak := now (Linux 4.0+)
    except OSError:
        pass  # the peak then includes the start-up: a stricter test
    return memory("VmRSS")

image_set = data.load_images(sys.argv[1])
"""

DECODE = PRELUDE + """
before = start()
decoded = data.decode_dataset(image_set, int(sys.argv[3]), cache_dir=Path(sys.argv[2]))
print(json.dumps({"growth": memory("VmHWM") - before, "n": len(decoded.names),
                  "memmap": isinstance(decoded.x, np.memmap)}))
"""

BATCHES = PRELUDE + """
size = int(sys.argv[3])
decoded = data.decode_dataset(image_set, size, cache_dir=Path(sys.argv[2]))
split = data.split_dataset(decoded)["train"]
warm_up = data.make_batches(np.zeros((64, size, size, 3), np.uint8), np.zeros(64, np.int64), 16, shuffle=True)
for _ in warm_up:
    pass  # TensorFlow's start-up (its threads, the code it pages in) is not the data's
before = start()
batches = data.make_batches(data.Rows(decoded.x, split), decoded.y[split], 16, shuffle=True, seed=0)
n_seen = sum(len(labels) for _, labels in batches)
print(json.dumps({"growth": memory("VmHWM") - before, "n": n_seen, "n_train": len(split)}))
"""


OVERLAPPED = PRELUDE + """
import keras
from tl_core.config import DataConfig
from tl_core.features import extract_features
from tl_core.progress import NullProgress
from tl_core.features import decode_and_extract
size = int(sys.argv[3])
inputs = keras.Input((size, size, 3))
model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))  # per-channel means: cheap
extract_features(model, np.zeros((64, size, size, 3), np.uint8), 16)  # TensorFlow's start-up is not the data's
cache = Path(sys.argv[2])
before = start()
decoded, features = decode_and_extract(image_set, size, DataConfig(), cache_dir=cache, feature_model=model,
                                       features_path=lambda hashes: cache / "f.npy", batch_size=16,
                                       progress=NullProgress())
growth = memory("VmHWM") - before
rows = [0, 1234, len(decoded.x) - 1]
expected = np.asarray(decoded.x[rows], np.float32).mean(axis=(1, 2))
print(json.dumps({"growth": growth, "n": len(decoded.names), "n_features": len(features),
                  "error": float(np.abs(np.asarray(features[rows], np.float32) - expected).max())}))
"""


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """6,000 random 16 x 16 PNGs in 3 classes (the decoded size comes from the resize)."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def _measure(script: str, folder: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", script, str(folder), str(cache), str(SIZE)], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_decoding_into_the_cache_takes_far_less_memory_than_the_pixels(many_images, tmp_path):
    result = _measure(DECODE, many_images, tmp_path)
    assert result["n"] == N_IMAGES and result["memmap"]
    assert result["growth"] < MAX_GROWTH, f"{result['growth'] / 1e6:.0f} MB for {DECODED_BYTES / 1e6:.0f} MB of pixels"


def test_an_epoch_of_batches_from_the_cache_takes_far_less_memory_than_the_pixels(many_images, tmp_path):
    result = _measure(BATCHES, many_images, tmp_path)
    assert result["n"] == result["n_train"] > 0.6 * N_IMAGES
    assert result["growth"] < MAX_GROWTH, f"{result['growth'] / 1e6:.0f} MB for {DECODED_BYTES / 1e6:.0f} MB of pixels"


def test_extraction_overlapped_with_decoding_takes_far_less_memory_than_the_pixels(many_images, tmp_path):
    """Decoding from files with the forward pass running on each batch as it is decoded."""
    result = _measure(OVERLAPPED, many_images, tmp_path)
    assert result["n"] == result["n_features"] == N_IMAGES
    assert result["error"] < 0.5  # float16 features of the right rows (channel means 0-255)
    assert result["growth"] < MAX_GROWTH, f"{result['growth'] / 1e6:.0f} MB for {DECODED_BYTES / 1e6:.0f} MB of pixels"
