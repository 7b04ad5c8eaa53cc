"""Regenerates docs/gradient_flow_tab.png, the README's picture of the tab.

Runs ``tb-gradflow demo`` into a temporary log directory (its three runs, 300
logged steps each), serves it with ``tensorboard``, opens the Gradient Flow tab
in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright; never
``playwright install``) on the view the README describes, ``unnormalised_inputs``
compared with ``healthy`` (given in the URL, as a shared link gives it), and
saves a screenshot of the page.

Usage:
    .venv/bin/python docs/make_screenshot.py [--out docs/gradient_flow_tab.png]
        [--theme dark|light]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GRADFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUNS = {"healthy": 300, "unnormalised_inputs": 300}  # logged steps the demo writes
VIEW = {"run": "unnormalised_inputs", "compare": "healthy"}
VIEWPORT = {"width": 1360, "height": 1080}  # CSS px
TIMEOUT = 120.0  # s for TensorBoard to start and to list every step


def run_demo(logdir: str) -> None:
    """``tb-gradflow demo --logdir LOGDIR`` with this interpreter's install."""
    command = [sys.executable, "-m", "tb_gradflow.cli", "demo", "--logdir", logdir]
    subprocess.run(command, check=True, cwd=ROOT)


class TensorBoard:
    """``tensorboard --logdir LOGDIR`` on a free local port; ``close()`` it."""

    def __init__(self, logdir: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                f"--logdir={logdir}",
                "--host=127.0.0.1",
                "--port=0",
                "--reload_interval=1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        # drained all along: a full pipe would stop TensorBoard
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.close()
                raise RuntimeError("tensorboard printed no address") from None
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}/"
                return

    def _pump(self, lines: queue.Queue) -> None:
        for line in self.process.stdout:
            lines.put(line)

    def wait_for_runs(self, expected: dict[str, int]) -> None:
        """Until the tab's ``runs`` route lists the last step of each run."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.url + "data/plugin/gradflow/runs") as r:
                runs = {x["run"]: x["last_step"] for x in json.load(r)["runs"]}
            if all(runs.get(run) == n - 1 for run, n in expected.items()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"TensorBoard did not list {expected} in time: {runs}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def screenshot(url: str, out: Path, theme: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            # TensorBoard follows the browser's colour scheme by default
            page = browser.new_page(viewport=VIEWPORT, color_scheme=theme)
            query = "&".join(
                f"p.gradflow.{k}={urllib.parse.quote(v)}" for k, v in VIEW.items()
            )
            page.goto(f"{url}#gradflow&{query}")
            frame = page.frame_locator("iframe")
            table = frame.locator(f'[data-testid=bar-table][data-run="{VIEW["run"]}"]')
            table.wait_for(state="attached", timeout=60_000)
            header = table.locator("tr").first.filter(has_text=VIEW["compare"])
            header.wait_for(state="attached", timeout=60_000)
            frame.locator("[data-testid=heatmap]").nth(1).wait_for(timeout=60_000)
            frame.locator("[data-testid=alerts] button").first.wait_for(timeout=60_000)
            if theme == "dark":
                frame.locator("html.gf-dark").wait_for(state="attached")
            # everything asked for is drawn in the frame after these answers
            frame.locator("body").evaluate(
                "() => new Promise((done) => requestAnimationFrame(() => "
                "requestAnimationFrame(() => done())))"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/gradient_flow_tab.png")
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logdir:
        run_demo(logdir)
        tensorboard = TensorBoard(logdir)
        try:
            tensorboard.wait_for_runs(RUNS)
            screenshot(tensorboard.url, args.out, args.theme)
        finally:
            tensorboard.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
