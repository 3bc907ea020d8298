"""Headless Chromium for the book and JupyterLab tests: the ``chromium`` fixture, screenshots, and
layout measured in the DOM.

Import the fixture into a test module: ``from browser import chromium  # noqa: F401``.

Chromium: Debian's ``chromium``. The session fixture installs it with ``apt-get install -y chromium``
when it is missing and apt-get is there and we are root; otherwise the tests that need it are
skipped with the reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# measures every table once the page has loaded and writes the numbers into a <pre> of the DOM:
# the viewport width, the page's scroll width, and per table its section heading, right edge and the
# scroll and client widths of the box that clips it (the theme's scroll container)
MEASURE_JS = """
window.addEventListener('load', () => {
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
  const pre = document.createElement('pre');
  pre.id = 'ambinb-measure';
  pre.textContent = JSON.stringify({viewport: document.documentElement.clientWidth,
                                    page_width: document.documentElement.scrollWidth, tables});
  document.body.appendChild(pre);
});
"""


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


def run(exe: str, url: str, profile: Path, size: tuple[int, int], *extra: str,
        timeout: int = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with a fresh profile folder and a window of ``size`` pixels."""
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(exe: str, url: str, shot: Path, size: tuple[int, int], *extra: str) -> tuple[float, int]:
    """Screenshot ``url`` into ``shot``; return (share of pixels that are not white, distinct colours)."""
    done = run(exe, url, shot.with_suffix(".profile"), size, f"--screenshot={shot}", *extra)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == size
        rgb = np.asarray(img.convert("RGB"))
    not_white = float((rgb < 235).any(axis=2).mean())
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    return not_white, len(np.unique(packed))


def dump_dom(exe: str, url: str, profile: Path, size: tuple[int, int], budget_ms: int = 5000) -> str:
    """The DOM of ``url`` after its scripts ran (``--dump-dom`` after ``budget_ms`` of virtual time)."""
    done = run(exe, url, profile, size, f"--virtual-time-budget={budget_ms}", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def measure_tables(exe: str, page: Path, profile: Path, size: tuple[int, int]) -> dict:
    """Lay out a built HTML page at ``size`` and measure its tables (see ``MEASURE_JS``)."""
    probe = page.with_name(f"{page.stem}.measure.html")  # beside the page: its relative links still work
    probe.write_text(page.read_text().replace("</body>", f"<script>{MEASURE_JS}</script></body>"))
    dom = dump_dom(exe, probe.as_uri(), profile, size)
    found = re.search(r'<pre id="ambinb-measure"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"no measurement in the DOM of {probe}"
    return json.loads(html.unescape(found.group(1)))
