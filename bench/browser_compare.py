"""Compare strategies through the real app in a real browser, reloading the page mid-run.

    TL_WEIGHTS_DIR=../shared/weights python bench/browser_compare.py --data ../shared/datasets/clipart8

Starts the app on a free loopback port with a fresh data folder, loads the dataset through the
Data page ("Local folder"), clicks "Compare strategies" on the Train page with its defaults
(MobileNet, ImageNet weights, 224 px), reloads the page while fine-tuning runs, waits for the four
runs, saves screenshots and prints each run's test accuracy, macro F1 and training time, with the
feature extractor (softmax) as the baseline of the time ratios.

With ``--strategy-only`` it stops after the Strategy page: the advisor measures the dataset in the
browser session (the page runs ``python -m tl_core advise``), the page is saved as strategy.png
and the time from opening the page to the measurements shown is printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import CHROMIUM_ARGS as ARGS
from _common import REPO, start_app

from tl_core.charts import run_label
from tl_core.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "clipart8"))
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--strategy-only", action="store_true", help="only measure and screenshot the Strategy page")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tl-compare-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server, url = start_app(data_dir)
    try:
        run_browser(url, args.data, out, RunStore(data_dir), args.timeout, args.strategy_only)
    finally:
        server.terminate()
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {data_dir}"], check=False)


def settle(page) -> None:
    """Wait for the script run to end and every Plotly chart to draw (for the screenshots)."""
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('[data-testid=stPlotlyChart]')).every(c => c.querySelector('.main-svg'))",
        timeout=60_000,
    )
    page.wait_for_timeout(1000)


def run_browser(url: str, data: str, out: Path, store: RunStore, timeout: float, strategy_only: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url + "/")
        page.get_by_role("tab", name="Local folder").click()
        page.get_by_label("Folder path").fill(str(Path(data).resolve()))
        page.get_by_label("Folder path").press("Enter")
        page.get_by_role("button", name="Use this folder").click()
        page.get_by_text("Health of").wait_for(timeout=300_000)
        if strategy_only:
            started = time.time()
            page.get_by_test_id("stSidebarNav").get_by_text("Strategy", exact=True).click()
            page.get_by_text("Which layer's features fit your labels").wait_for(timeout=300_000)
            print(f"Strategy page measured the dataset in {time.time() - started:.1f} s")
            page.set_viewport_size({"width": 1400, "height": 1700})  # the page scrolls inside: show it all
            settle(page)
            page.screenshot(path=str(out / "strategy.png"), full_page=True)
            browser.close()
            return
        page.get_by_test_id("stSidebarNav").get_by_text("Train", exact=True).click()
        page.get_by_role("button", name="Compare strategies").click()
        page.get_by_text(re.compile(r"Queued \d+ run\(s\)\.")).wait_for(timeout=60_000)
        started = time.time()
        page.get_by_text(re.compile("Stage 2: fine-tuning")).first.wait_for(timeout=1_800_000)
        page.get_by_text(re.compile(r"epoch \d+: batch [1-9]")).first.wait_for(timeout=300_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "train_running.png"), full_page=True)
        print(f"fine-tuning stage 2 reached after {time.time() - started:.0f} s; reloading the page")
        page.reload()
        page.get_by_text(re.compile(r"▶ ")).first.wait_for(timeout=60_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "train_after_reload.png"), full_page=True)
        print("after the reload the running job is still shown")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(r["status"] in ("succeeded", "failed", "cancelled") for r in store.list_runs()):
                break
            time.sleep(5)
        page.get_by_test_id("stSidebarNav").get_by_text("Runs", exact=True).click()
        page.get_by_text("Test accuracy against training time").wait_for(timeout=60_000)
        settle(page)
        page.screenshot(path=str(out / "runs.png"), full_page=True)
        runs = sorted(store.list_runs(), key=lambda r: r["created_at"])
        # The first split's best run (ranking runs of different splits by their accuracy would not be fair).
        first_split = [r for r in runs if r["status"] == "succeeded" and r["config"]["data"]["seed"] == runs[0]["config"]["data"]["seed"]]
        best = max(first_split, key=lambda r: r["metrics"]["test_accuracy"])
        result = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        result.goto(f"{url}/result?run={best['id']}")
        result.get_by_text("Test accuracy").wait_for(timeout=120_000)
        settle(result)
        result.screenshot(path=str(out / "result.png"), full_page=True)
        result.get_by_role("tab", name="Most confident mistakes").click()
        settle(result)
        result.screenshot(path=str(out / "result_mistakes.png"), full_page=True)
        browser.close()
    baseline = next(r for r in runs if r["config"]["train"]["strategy"] == "feature_extractor")["metrics"]["seconds"]
    print(f"\n{'run':<58} {'status':<10} {'test acc':>8} {'macro F1':>8} {'seconds':>8} {'x baseline':>10}")
    for run in runs:
        m = run.get("metrics") or {}
        if m:
            print(f"{run_label(run):<58} {run['status']:<10} {m['test_accuracy']:>8.3f} {m['macro_f1']:>8.3f} "
                  f"{m['seconds']:>8.1f} {m['seconds'] / baseline:>10.1f}")
        else:
            print(f"{run_label(run):<58} {run['status']:<10} {run.get('error')}")


if __name__ == "__main__":
    main()
