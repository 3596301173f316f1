"""Screenshots of the explain and export features, in a real browser, on a real dataset.

    python bench/screenshots_explain.py [--data ../shared/datasets/clipart8] [--out docs/screenshots]

Trains one feature-extractor run (MobileNet, ImageNet weights from TL_WEIGHTS_DIR, 224 px) with
the command line into a fresh data folder, starts the app on it, and saves:
``gradcam.png`` (the Result page's most confident mistakes as Grad-CAM overlays),
``export.png`` (the export panel after a checked TFLite export) and ``predict_gradcam.png``
(the Predict page with heat maps). Prints the export's agreement and the time each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CHROMIUM_ARGS, DEFAULT_DATA, REPO, start_app


def settle(page) -> None:
    try:
        page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
    except Exception:  # noqa: BLE001 - a screenshot, not an assertion
        pass
    page.wait_for_timeout(1500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="tl-explain-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    trained = subprocess.run(
        [sys.executable, "-m", "tl_core", "train", "--data", args.data, "--data-dir", str(data_dir), "--quiet", "--json"],
        capture_output=True, text=True, env=env, check=True, cwd=REPO,
    )
    run = json.loads(trained.stdout.strip().splitlines()[-1])
    print(f"trained run {run['run_id']}: test accuracy {run['test_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)")

    from playwright.sync_api import sync_playwright

    server, url = start_app(data_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{url}/result?run={run['run_id']}")
            page.get_by_text("Test accuracy").first.wait_for(timeout=120_000)
            page.get_by_role("tab", name="Most confident mistakes").click()
            page.get_by_text("Heat map: what made it predict that").click()
            settle(page)
            page.screenshot(path=str(out / "gradcam.png"), full_page=True)

            page.get_by_role("tab", name="Export").click()
            page.get_by_role("combobox", name="Format").click()
            page.get_by_role("option", name=re.compile("TFLite float32")).click()
            step = time.perf_counter()
            page.get_by_role("button", name="Export and check").click()
            page.get_by_text("Agreement with the app", exact=True).wait_for(timeout=600_000)
            print(f"TFLite export checked in the browser in {time.perf_counter() - step:.0f} s")
            settle(page)
            page.screenshot(path=str(out / "export.png"), full_page=True)

            page.get_by_test_id("stSidebarNav").get_by_text("Predict", exact=True).click()
            images = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
                [str(images[0]), str(images[len(images) // 2])])
            page.get_by_text(re.compile("^Grad-CAM: ")).nth(1).wait_for(timeout=120_000)
            settle(page)
            page.screenshot(path=str(out / "predict_gradcam.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {data_dir}"], check=False)
    exports = json.loads((data_dir / "runs" / run["run_id"] / "exports" / "tflite.json").read_text())
    print(f"tflite: agreement {exports['agreement']:.3f}, accuracy {exports['accuracy']:.3f} "
          f"(app {exports['app_accuracy']:.3f}) on {exports['n_test']} test images")


if __name__ == "__main__":
    main()
