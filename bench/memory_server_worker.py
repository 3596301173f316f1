"""Peak resident memory of the app server plus its job worker while fine-tuning MobileNetV2.

    python bench/memory_server_worker.py [--data ../shared/datasets/fashion_mnist_2k] [--images 1000]

Takes ``--images`` images (classes in proportion) from the dataset into a fresh folder, starts
``streamlit run app.py`` with a fresh data folder, and in headless Chromium: loads the folder on
the Data page, opens the Train page, chooses MobileNetV2, two-stage fine-tuning (top 2 blocks), 224
px and clicks Train (weights ``none`` when no ImageNet MobileNetV2 file is in TL_WEIGHTS_DIR: the
same architecture and memory). When the run has finished it reads each process's peak resident
set size (``VmHWM`` in /proc, Linux) and prints server, worker and their sum, against the server's
own size before training (the baseline, same invocation) and the 2.0 GB budget (Streamlit
Community Cloud gives an app about 2.7 GB). The browser's memory is not counted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import CHROMIUM_ARGS as ARGS
from _common import REPO, machine, start_app

from tl_core.backbones import BACKBONES, local_weights_file
from tl_core.hardware import process_memory
from tl_core.store import RunStore

BUDGET = 2.0e9  # bytes


def rss(pid: int, field: str = "VmHWM") -> int:
    """Resident bytes of a process: ``VmHWM`` (its peak so far) or ``VmRSS`` (now)."""
    value = process_memory(field, pid)
    if not value:
        raise RuntimeError(f"no {field} for {pid}")
    return value


def subset(source: Path, n: int, target: Path) -> Path:
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    files = {c: sorted(f for f in c.iterdir() if f.is_file()) for c in classes}
    total = sum(len(v) for v in files.values())
    for c, items in files.items():
        (target / c.name).mkdir(parents=True, exist_ok=True)
        for f in items[: round(n * len(items) / total)]:
            shutil.copy(f, target / c.name / f.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "fashion_mnist_2k"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="tl-memory-"))
    folder = subset(Path(args.data), args.images, work / "images")
    data_dir = work / "data"
    server, url = start_app(data_dir)
    weights = "imagenet" if local_weights_file(BACKBONES["mobilenetv2"].weights_files) else "none"
    print(f"machine: {machine()}; {sum(1 for _ in folder.rglob('*.png'))} images; MobileNetV2 weights: {weights}")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url + "/")
            page.get_by_role("tab", name="Local folder").click()
            page.get_by_label("Folder path").fill(str(folder))
            page.get_by_label("Folder path").press("Enter")
            page.get_by_role("button", name="Use this folder").click()
            page.get_by_text("Health of").wait_for(timeout=300_000)
            page.get_by_test_id("stSidebarNav").get_by_text("Train", exact=True).click()
            page.get_by_role("button", name="Compare strategies").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            server_before = rss(server.pid, "VmRSS")
            for label, option in (("Backbone", "MobileNetV2"), ("Strategy", "Two-stage fine-tuning"), ("Weights", weights)):
                page.get_by_role("combobox", name=label).click()
                page.get_by_role("option", name=option, exact=True).click()
            box = page.get_by_role("spinbutton", name="Image size (px)")
            box.fill("224")
            box.press("Tab")
            page.get_by_role("button", name="Train", exact=True).click()
            page.get_by_text("Queued 1 run(s).").wait_for(timeout=60_000)
            store = RunStore(data_dir)
            deadline = time.time() + args.timeout
            # The worker and the fresh process it trains each run in (gone when the run ends): the
            # peak of each, read while it lives.
            peaks: dict[int, int] = {}
            while time.time() < deadline:
                found = subprocess.run(["pgrep", "-f", f"tl_core worker --data-dir {data_dir}"], capture_output=True, text=True)
                for pid in map(int, found.stdout.split()):
                    try:
                        peaks[pid] = max(peaks.get(pid, 0), rss(pid))
                    except (OSError, ValueError, RuntimeError):
                        pass  # it ended between pgrep and the read
                runs = store.list_runs()
                if runs and all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs):
                    break
                time.sleep(0.5)
            page.wait_for_timeout(3000)  # the page renders the finished run
            server_peak = rss(server.pid)
            worker_peak = sum(peaks.values())  # worker + its training process: they live at the same time
            browser.close()
        run = store.list_runs()[0]
        metrics = run.get("metrics") or {}
        print(f"run {run['status']}: test accuracy {metrics.get('test_accuracy', float('nan')):.3f}, "
              f"{metrics.get('seconds', float('nan')):.0f} s; notes: {' '.join(metrics.get('notes', []))}")
        gib = 1e9
        total = server_peak + worker_peak
        print(f"server before training (baseline): {server_before / gib:.2f} GB")
        print(f"server peak:  {server_peak / gib:.2f} GB ({server_peak / server_before:.2f}x its size before training)")
        print(f"worker peak:  {worker_peak / gib:.2f} GB (the worker and its training process, {len(peaks)} processes)")
        print(f"server + worker peaks: {total / gib:.2f} GB = {total / BUDGET:.2f}x the 2.0 GB budget "
              f"({'within' if total <= BUDGET else 'OVER'} budget)")
    finally:
        server.terminate()
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {data_dir}"], check=False)


if __name__ == "__main__":
    main()
