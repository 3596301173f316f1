"""The linear head's fit with one BLAS thread against the BLAS library's default threads, same run.

    python bench/head_fit.py [--seeds 42 43 44]

MobileNet ImageNet features (TL_WEIGHTS_DIR) of clipart8 (224 px) and fashion_mnist_2k (64 px); on
each seed's 70/15/15 split the softmax head is fitted as the runner fits it (C chosen on the
validation split from heads.C_GRID, then refitted), alternately with the BLAS library's default
number of threads and with one (tl_core.heads.HEAD_BLAS_THREADS). Prints the seconds of each and
their ratio, and checks that both chose the same C and agree on every test prediction. Results go
to bench/results/head_fit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data, heads
from tl_core.config import DataConfig
from tl_core.features import extract_features

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {"clipart8": 224, "fashion_mnist_2k": 64}


def features_of(name: str, size: int):
    decoded = data.decode_dataset(data.load_images(SHARED / name), size)
    spec = backbones.get_spec("mobilenet")
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"), size)
    model = backbones.build_feature_model(spec, base, size)
    return decoded, np.asarray(extract_features(model, decoded.x), np.float32)


def fit(features, y, split, threads: int):
    os.environ[heads.HEAD_BLAS_THREADS_ENV] = str(threads)  # 0: the library's default
    started = time.perf_counter()
    head = heads.LinearHead("softmax", seed=0).fit(features[split["train"]], y[split["train"]],
                                                  features[split["val"]], y[split["val"]])
    return time.perf_counter() - started, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    from threadpoolctl import threadpool_info

    blas = [f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"machine: {machine()}; BLAS: {', '.join(blas)}")
    rows = []
    for name, size in DATASETS.items():
        decoded, features = features_of(name, size)
        for seed in args.seeds:
            split = data.split_dataset(decoded, DataConfig(seed=seed))
            default_s, default = fit(features, decoded.y, split, 0)
            one_s, one = fit(features, decoded.y, split, 1)
            test = features[split["test"]]
            same = default.C_ == one.C_ and bool((default.predict(test) == one.predict(test)).all())
            rows.append({"dataset": name, "seed": seed, "default_threads_s": default_s, "one_thread_s": one_s,
                         "ratio": default_s / one_s, "same_head": same})
            print(f"{name:18s} seed {seed}: default threads {default_s:6.2f} s, one thread {one_s:5.2f} s "
                  f"-> {default_s / one_s:5.1f}x faster; same C and test predictions: {same}")
    os.environ.pop(heads.HEAD_BLAS_THREADS_ENV, None)
    out = REPO / "bench" / "results" / "head_fit.json"
    out.write_text(json.dumps({"machine": machine(), "blas": blas, "rows": rows}, indent=1))
    print(f"median speed-up {np.median([r['ratio'] for r in rows]):.1f}x; all the same heads: "
          f"{all(r['same_head'] for r in rows)}")


if __name__ == "__main__":
    main()
