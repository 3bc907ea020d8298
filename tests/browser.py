"""Headless Chromium for the book and JupyterLab tests: the ``chromium`` fixture, and
:class:`DevTools`, which loads pages, waits until they are ready, measures their layout in the DOM
(``MEASURE_JS``) and takes screenshots.

Import the fixture into a test module: ``from browser import chromium  # noqa: F401``.

Chromium: Debian's ``chromium``. The session fixture installs it with ``apt-get install -y chromium``
when it is missing and apt-get is there and we are root; otherwise the tests that need it are
skipped with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# every table of the page: its section heading, right edge, and the scroll and client widths of the
# box that clips it (the theme's scroll container); the viewport width, the page's scroll width and
# the left edge of the page's table of contents on the right (null when the theme hides it)
MEASURE_JS = """(() => {
  const tables = [...document.querySelectorAll('table')].map((t) => {
    const section = t.closest('section');
    const heading = section ? (section.querySelector('h1, h2, h3') || {}).textContent || '' : '';
    let box = t.parentElement;
    while (box && box !== document.body && !/(auto|scroll|hidden)/.test(getComputedStyle(box).overflowX)) {
      box = box.parentElement;
    }
    box = box || document.body;
    return {section: heading.replace(/#$/, '').trim(), right: t.getBoundingClientRect().right,
            box_right: box.getBoundingClientRect().right, scroll_width: box.scrollWidth, client_width: box.clientWidth};
  });
  const side = document.querySelector('.bd-sidebar-secondary');
  const visible = side && side.getBoundingClientRect().width > 0 && getComputedStyle(side).display !== 'none';
  return {viewport: document.documentElement.clientWidth, page_width: document.documentElement.scrollWidth,
          sidebar_left: visible ? side.getBoundingClientRect().left : null, tables};
})()"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (root and apt-get needed), else skip."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe:
        return exe
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium, and no apt-get to install Debian's chromium")
    if os.geteuid() != 0:
        pytest.skip("no chromium, and installing it with apt-get needs root (run: sudo apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:  # package lists may be missing or stale in a fresh container
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=300)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    exe = shutil.which("chromium")
    if done.returncode or not exe:
        pytest.skip(f"`apt-get install -y chromium` failed (exit {done.returncode}): {done.stderr[-500:]}")
    return exe


class DevTools:
    """A headless Chromium driven over its DevTools protocol: load a page, wait until a script says it
    is ready (no fixed time budget), read the page and screenshot it. Use as a context manager."""

    def __init__(self, exe: str, profile: Path, size: tuple[int, int]) -> None:
        import requests
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile keeps the last port
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
            while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
                assert self.proc.poll() is None and time.time() < deadline, "Chromium did not open its DevTools port"
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json", timeout=30).json() if t["type"] == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        except BaseException:
            self._stop()
            raise
        self.calls = 0

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()
        self._stop()

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def call(self, method: str, **params: object) -> dict:
        """Send one DevTools command and return its result (events in between are skipped)."""
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.calls:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 120) -> None:
        """Load ``url`` and wait until the JavaScript expression ``ready`` is true."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while not self.evaluate(ready):
            assert time.time() < deadline, f"{url}: not ready after {timeout} s ({ready}); page text: " \
                                           f"{str(self.evaluate('document.body && document.body.innerText'))[:1000]}"
            time.sleep(0.5)

    def resize(self, size: tuple[int, int]) -> None:
        """Lay the page out for a window of ``size`` pixels."""
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the window."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


def picture_stats(path: Path) -> tuple[float, int]:
    """(share of pixels that are not white, distinct colours) of a screenshot."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    return float((rgb < 235).any(axis=2).mean()), len(np.unique(packed))
