"""JupyterLab as a user meets it, without a mouse: a Lab server started headless on a loopback port
with a token made here, driven through its REST API and kernel websocket as Lab's front end does.

- ``notebooks/01_labels.ipynb`` runs top to bottom with its default parameters in a session with
  the project's kernel (``ambinb``, registered by ``make install`` from the project's environment),
  and no cell errors; a progress bar there is a widget.
- Headless Chromium shows Lab with that notebook open: the page rendered (not blank, not an error
  page), with the notebook's title and the project's kernel in it.

Lab serves a copy of the notebook in a temporary folder (an autosave never touches the checkout);
run folders go to a temporary run root (``$AMBINB_RUN_ROOT``); Jupyter's config, data and runtime
folders are temporary too, so the kernel can only come from the project's environment. About 30 s
on a quiet machine (server ~5 s, the notebook ~10 s, Chromium ~10 s).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import browser
import pytest
import requests
import websocket
from browser import chromium

from ambinb.paths import project_root

FIXTURES = (chromium,)  # a pytest fixture from browser, used by name below
KERNEL = "ambinb"
NOTEBOOK = "notebooks/01_labels.ipynb"
CELL_TIMEOUT_S = 300
LAB_SIZE = (1400, 1000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running Lab server: its base URL, token and REST calls."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def api(self, method: str, path: str, **kwargs) -> dict:
        done = requests.request(method, f"{self.url}{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=60, **kwargs)
        done.raise_for_status()
        return done.json() if done.content else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (a free port, a fresh token), from the project root, stopped afterwards."""
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(24)
    (tmp / "root" / "notebooks").mkdir(parents=True)  # Lab serves a copy: an autosave never touches the checkout
    shutil.copyfile(project_root() / NOTEBOOK, tmp / "root" / NOTEBOOK)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # figures inline, as in Lab
    env.update(AMBINB_RUN_ROOT=str(tmp / "runs"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_DATA_DIR=str(tmp / "data"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTER_PLATFORM_DIRS="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp / 'root'}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}", f"--MappingKernelManager.default_kernel_name={KERNEL}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           *(["--allow-root"] if os.geteuid() == 0 else [])]  # a CI container may run as root
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp / "root")
    server = Lab(f"http://127.0.0.1:{port}", token)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"the Lab server exited: {(tmp / 'server.log').read_text()[-2000:]}"
            try:
                server.api("GET", "/api/status")
                break
            except requests.RequestException:
                assert time.time() < deadline, f"no Lab server after 120 s: {(tmp / 'server.log').read_text()[-2000:]}"
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def kernel_id(lab: Lab) -> str:
    """A session for 01_labels with the project's kernel (what Lab makes when the notebook opens)."""
    specs = lab.api("GET", "/api/kernelspecs")["kernelspecs"]
    assert KERNEL in specs, f"no {KERNEL!r} kernel in the project's environment (run `make install`): {sorted(specs)}"
    session = lab.api("POST", "/api/sessions", json={"path": NOTEBOOK, "type": "notebook", "name": Path(NOTEBOOK).name,
                                                      "kernel": {"name": KERNEL}})
    assert session["kernel"]["name"] == KERNEL
    return session["kernel"]["id"]


def _message(code: str, session: str) -> dict:
    header = {"msg_id": uuid.uuid4().hex, "username": "test", "session": session, "msg_type": "execute_request",
              "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}


def execute(ws: websocket.WebSocket, code: str, session: str) -> tuple[str, list[dict]]:
    """Run ``code`` in the kernel; return the reply status and the cell's iopub messages."""
    request = _message(code, session)
    ws.send(json.dumps(request))
    msg_id, status, idle, seen = request["header"]["msg_id"], None, False, []
    deadline = time.time() + CELL_TIMEOUT_S
    while status is None or not idle:
        assert time.time() < deadline, f"no reply in {CELL_TIMEOUT_S} s to:\n{code}"
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
            status = msg["content"]["status"]
        elif msg["channel"] == "iopub":
            seen.append(msg)
            idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return status, seen


def test_01_labels_runs_top_to_bottom_in_the_project_kernel(lab, kernel_id):
    cells = [c for c in json.loads((project_root() / NOTEBOOK).read_text())["cells"] if c["cell_type"] == "code"]
    ws = websocket.create_connection(f"{lab.url.replace('http', 'ws')}/api/kernels/{kernel_id}/channels"
                                     f"?token={lab.token}", timeout=CELL_TIMEOUT_S)
    session = uuid.uuid4().hex
    try:
        for k, cell in enumerate(cells):
            status, seen = execute(ws, "".join(cell["source"]), session)
            errors = [m["content"] for m in seen if m["msg_type"] == "error"]
            assert status == "ok" and not errors, (f"code cell {k} of {NOTEBOOK} failed: "
                                                   f"{[(e['ename'], e['evalue']) for e in errors]}")
        probe = "from ambinb import progress\nfor _ in progress.bar(range(3)): pass\nprint(progress.where())"
        status, seen = execute(ws, probe, session)
    finally:
        ws.close()
    printed = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream")
    widgets = [m for m in seen if m["msg_type"] == "display_data"
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert status == "ok" and printed.strip() == "widget" and widgets, (printed, [m["msg_type"] for m in seen])


def test_lab_shows_the_notebook_in_headless_chromium(lab, kernel_id, chromium, tmp_path):
    ready = ("!!document.querySelector('.jp-Notebook .jp-Cell') && document.body.innerText.includes('Python (ambinb)')"
             " && document.body.innerText.includes('Soft labels from annotator votes')")
    with browser.DevTools(chromium, tmp_path / "profile", LAB_SIZE) as page:
        page.open(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}", ready)  # fails unless the notebook shows
        time.sleep(1)                                                            # with the project's kernel
        shot = page.screenshot(tmp_path / "lab.png")
    not_white, colours = browser.picture_stats(shot)
    assert not_white > 0.03, f"only {not_white:.1%} of the screenshot is not white: blank page?"
    assert colours > 200, f"only {colours} distinct colours: nothing rendered?"
