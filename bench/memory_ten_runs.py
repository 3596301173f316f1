"""Resident memory of the app server and the job worker over 10 consecutive runs, one of them a
"Compare strategies" group, with each run in a fresh process (the worker's way) and, as the
baseline in the same invocation, every run inside the worker process (``TL_WORKER_IN_PROCESS=1``).

    python bench/memory_ten_runs.py [--data ../shared/datasets/clipart8] [--image-size 96] [--epochs 2]
        [--modes fresh,in-process] [--no-browser]

For each mode: a fresh data folder, ``streamlit run app.py`` on it (with headless Chromium on its
home page, so the server serves a session whose sidebar follows the queue), and the job worker that
the app starts (:func:`tl_core.jobs.ensure_worker`). Once the worker is idle its resident size is
the baseline; then 3 runs, a comparison of 4 (:func:`tl_core.comparison.plan`, one split each, queued
together as the Train page does) and 3 more runs are submitted. Every 0.2 s the resident size
(``VmRSS`` in /proc, Linux) of the server and of the worker's process tree (the worker and any
training child) is sampled. Printed: the worker's own size after each run against its idle size,
and the peak of server + worker against the 2.0 GB budget (Streamlit Community Cloud gives an app
about 2.7 GB). The browser is not counted. Results: ``bench/results/memory_ten_runs.{json,txt}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import CHROMIUM_ARGS, DEFAULT_DATA, REPO, machine, start_app

from tl_core import comparison
from tl_core.config import DataConfig, TrainConfig
from tl_core.hardware import process_memory
from tl_core.jobs import ensure_worker, submit, worker_alive
from tl_core.store import RunStore

BUDGET = 2.0e9  # bytes
FINAL = {"succeeded", "failed", "cancelled"}
RESULTS = REPO / "bench" / "results" / "memory_ten_runs"


def rss(pid: int) -> int:
    """Resident bytes of a process now; 0 once it is gone."""
    return process_memory("VmRSS", pid)


def descendants(pid: int) -> list[int]:
    """The process's children, their children and so on (from /proc/*/stat)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def find_worker(data_dir: Path, timeout: float = 60) -> int:
    """The pid of the worker process of ``data_dir`` (not its training children)."""
    wanted = f"tl_core\0worker\0--data-dir\0{data_dir}\0".encode()
    deadline = time.time() + timeout
    while time.time() < deadline:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes()
            except OSError:
                continue
            if wanted in text and b"--run\0" not in text:
                return int(cmdline.parent.name)
        time.sleep(0.2)
    raise RuntimeError(f"no worker process for {data_dir}")


class Sampler(threading.Thread):
    """Samples the server's and the worker tree's resident sizes until stopped; keeps the peaks."""

    def __init__(self, server: int, worker: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.server, self.worker, self.every = server, worker, every
        self.peak = {"server": 0, "worker_tree": 0, "sum": 0}
        self._done = threading.Event()

    def tree(self) -> int:
        return sum(rss(pid) for pid in [self.worker, *descendants(self.worker)])

    def run(self) -> None:
        while not self._done.wait(self.every):
            server, tree = rss(self.server), self.tree()
            for key, value in (("server", server), ("worker_tree", tree), ("sum", server + tree)):
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> None:
        self._done.set()
        self.join()


def ten_runs(image_size: int, epochs: int) -> list[list[tuple[str, TrainConfig, DataConfig]]]:
    """The submissions, in order: each is a list of runs queued together (a comparison: 4)."""
    base = TrainConfig(backbone="mobilenet", image_size=image_size, batch_size=16, epochs=epochs,
                       fine_tune_epochs=epochs, patience=epochs)
    data = DataConfig()

    def one(label: str, **changes) -> list[tuple[str, TrainConfig, DataConfig]]:
        return [(label, dataclasses.replace(base, **changes), data)]

    compared = [(f"compare: {comparison.strategy_label(c.to_dict())}", c, d)
                for c, d in comparison.plan(base, data, costly_splits=1, feature_splits=1)]
    return [
        one("feature extractor (softmax)"),
        one("two-stage fine-tuning (LP-FT)", strategy="finetune"),
        one("from scratch", strategy="scratch", weights="none"),
        compared,
        one("feature extractor (one-vs-rest)", head="ovr"),
        one("two-stage fine-tuning, augmented", strategy="finetune", augment=True, start_from_probe=False),
        one("two-stage fine-tuning, all blocks", strategy="finetune", unfreeze_blocks=-1),
    ]


def wait_until_gone(worker: int, run_id: str, timeout: float = 60) -> None:
    """Until no process trains ``run_id`` (its training child has exited: fresh-process mode)."""
    deadline = time.time() + timeout
    marker = f"--run\0{run_id}\0".encode()
    while time.time() < deadline:
        if not any(marker in _cmdline(pid) for pid in descendants(worker)):
            return
        time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def measure(mode: str, source: Path, work: Path, args) -> dict:
    """One mode's 10 runs, from a fresh data folder and app server."""
    data_dir = (work / mode).resolve()
    os.environ["TL_WORKER_IN_PROCESS"] = "1" if mode == "in-process" else "0"  # the server and worker inherit it
    server, url = start_app(data_dir)
    store = RunStore(data_dir)
    browser = page = playwright = None
    worker = None
    try:
        if args.browser:
            from playwright.sync_api import sync_playwright

            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/")
            page.wait_for_timeout(3000)
        ensure_worker(store)
        worker = find_worker(data_dir)
        while not worker_alive(store):
            time.sleep(0.2)
        time.sleep(2.0)
        idle, server_idle = rss(worker), rss(server.pid)
        sampler = Sampler(server.pid, worker)
        sampler.start()
        runs = []
        for batch in ten_runs(args.image_size, args.epochs):
            group = uuid.uuid4().hex[:8] if len(batch) > 1 else None
            ids = [submit(store, source, config, data, name=label, group=group) for label, config, data in batch]
            ensure_worker(store)
            for (label, _, _), run_id in zip(batch, ids):
                while (run := store.get_run(run_id))["status"] not in FINAL:
                    time.sleep(0.2)
                wait_until_gone(worker, run_id)
                after = rss(worker)
                seconds = (run.get("metrics") or {}).get("seconds")
                runs.append({"label": label, "status": run["status"], "error": run.get("error"), "seconds": seconds,
                             "worker_rss": after, "ratio_to_idle": after / idle})
                print(f"  [{mode}] {len(runs):>2}. {label:<42} {run['status']:<9} "
                      f"{seconds or float('nan'):5.0f} s  worker {after / 1e9:.2f} GB = {after / idle:.2f}x idle",
                      flush=True)
        if page is not None:
            page.goto(url + "/runs")  # the server renders every run's row
            page.wait_for_timeout(5000)
        sampler.stop()
        return {"idle_worker_rss": idle, "runs": runs, "peak": sampler.peak,
                "server_before_runs": server_idle, "max_ratio_to_idle": max(r["ratio_to_idle"] for r in runs)}
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
        server.terminate()
        server.wait(30)
        if worker is not None and rss(worker):
            os.kill(worker, signal.SIGTERM)  # its training child, if any, dies with it


def report(results: dict) -> list[str]:
    gb = 1e9
    lines = [f"machine: {results['machine']}; {results['images']} images ({results['dataset']}), "
             f"{results['image_size']} px, {results['epochs']} epoch(s) per stage; 10 runs, 4 of them one comparison"]
    for mode, found in results["modes"].items():
        peak = found["peak"]
        after = ", ".join(f"{r['ratio_to_idle']:.2f}" for r in found["runs"])
        failed = [r for r in found["runs"] if r["status"] != "succeeded"]
        lines += [
            f"{mode}: worker idle {found['idle_worker_rss'] / gb:.3f} GB; after each run (x idle): {after}; "
            f"worst {found['max_ratio_to_idle']:.2f}x",
            f"{mode}: peak server {peak['server'] / gb:.2f} GB (before the runs "
            f"{found['server_before_runs'] / gb:.2f}), worker tree {peak['worker_tree'] / gb:.2f} GB, "
            f"server + worker {peak['sum'] / gb:.2f} GB = {peak['sum'] / BUDGET:.2f}x the 2.0 GB budget "
            f"({'within' if peak['sum'] <= BUDGET else 'OVER'})"
            + (f"; {len(failed)} run(s) not succeeded: {failed[0]['error']}" if failed else ""),
        ]
    if {"fresh", "in-process"} <= set(results["modes"]):
        fresh, old = results["modes"]["fresh"], results["modes"]["in-process"]
        lines.append(
            f"worker after its last run: {fresh['runs'][-1]['worker_rss'] / gb:.3f} GB (fresh process per run) vs "
            f"{old['runs'][-1]['worker_rss'] / gb:.2f} GB (in-process baseline) = "
            f"{old['runs'][-1]['worker_rss'] / fresh['runs'][-1]['worker_rss']:.1f}x less; peak server + worker "
            f"{fresh['peak']['sum'] / gb:.2f} vs {old['peak']['sum'] / gb:.2f} GB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes", default="fresh,in-process", help="fresh, in-process or both (comma-separated)")
    parser.add_argument("--no-browser", dest="browser", action="store_false", help="no Chromium session on the app")
    args = parser.parse_args()
    source = Path(args.data).resolve()
    work = Path(tempfile.mkdtemp(prefix="tl-ten-runs-"))
    results = {"machine": machine(), "dataset": source.name, "images": sum(1 for p in source.rglob("*") if p.is_file()),
               "image_size": args.image_size, "epochs": args.epochs, "budget_bytes": BUDGET, "modes": {}}
    try:
        for mode in args.modes.split(","):
            results["modes"][mode] = measure(mode, source, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = report(results)
    print("\n".join(lines))
    RESULTS.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    RESULTS.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
