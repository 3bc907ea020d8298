"""A small OpenAI-compatible chat server on 127.0.0.1 for the curation tests (stdlib only).

It answers ``POST /v1/chat/completions`` the way the real API does (``choices``, ``usage``,
error bodies), so the tests drive it through the official ``openai`` client. It recognises the
two requests of :mod:`ambinb.curation`:

- a *write* request (the user text has ``Listeners' split (JSON): {...}``) gets a think block as
  JSON whose synthesis repeats each class name in proportion to its share, in tenths
  (``"anger anger anger anger anger anger neutral neutral neutral neutral"`` for 0.6/0.4);
- a *read* request (the user text has ``Analysis:``) gets ``{"distribution": ...}`` counted from
  the class names in that synthesis line.

So an undisturbed run is accepted at the first attempt. Faults are scripted per request kind
(``write``, ``read`` or ``any``) and consumed in arrival order; once a script is used up, every
request gets the fault ``always`` (``"ok"`` by default: a normal answer)::

    "429"           rate limit (with ``retry-after: 0``)
    "500"           server error
    "401"           authentication error
    "403"           permission denied
    "quota"         a 429 whose code says the account's quota is exhausted (``insufficient_quota``)
    "slow"          answer normally after ``slow_seconds`` (beyond the client's timeout)
    "truncated"     a 200 answer whose content is JSON cut in half
    "wrong_schema"  a 200 answer with valid JSON of the wrong shape
    "far"           (read) all mass on the class the synthesis names least

Every request is logged in ``calls`` (kind, transcript, fault, authorization header, audio sent).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "401", "403", "quota", "slow", "truncated", "wrong_schema", "far")


def _user_text(body: dict[str, Any]) -> str:
    texts = []
    for msg in body.get("messages", []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(texts)


def audio_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``input_audio`` parts of a request's messages."""
    return [p["input_audio"] for m in body.get("messages", []) if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "input_audio"]


def _labels(text: str) -> list[str]:
    m = re.search(r"^Labels: (.*)$", text, flags=re.M)
    return [c.strip() for c in m.group(1).split(",")] if m else []


def _transcript(text: str) -> str:
    m = re.search(r'^Transcript: "(.*)"$', text, flags=re.M)
    return m.group(1) if m else ""


def write_answer(text: str) -> dict[str, Any]:
    """The default writer: a schema-valid think block whose synthesis encodes the target in tenths."""
    target = json.loads(re.search(r"Listeners' split \(JSON\): (\{.*\})", text).group(1))
    words = []
    for label, share in target.items():
        words += [label] * int(round(10 * share))
    return {"keywords": ["fake cue"], "text": "The words are read for meaning.",
            "audio": {"Volume": "usual.", "Speed": "usual.", "Pitch": "usual.", "Tone": "usual."},
            "synthesis": "Weighing everything: " + " ".join(words)}


def read_answer(text: str, far: bool = False) -> dict[str, Any]:
    """The default reader: class-name counts in the synthesis line of the analysis."""
    labels = _labels(text)
    m = re.search(r"Step 3 \(synthesis\): (.*)", text)
    line = m.group(1) if m else ""
    counts = {c: len(re.findall(rf"\b{re.escape(c)}\b", line)) for c in labels}
    total = sum(counts.values()) or 1
    if far:
        least = min(labels, key=lambda c: (counts[c], c))
        return {"distribution": {c: float(c == least) for c in labels}}
    return {"distribution": {c: counts[c] / total for c in labels}}


class FakeOpenAI:
    """The server: ``with FakeOpenAI() as srv: ... srv.base_url ...``."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 1.0, always: str = "ok"):
        if always not in FAULTS and always != "ok":
            raise ValueError(f"unknown fault {always!r}")
        self.always = always
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.scripts: dict[str, deque[str]] = {"write": deque(), "read": deque(), "any": deque()}
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # --- scripting --------------------------------------------------------------------------
    def push(self, kind: str, *faults: str) -> None:
        """Queue faults for the next requests of ``kind`` (``write``, ``read`` or ``any``)."""
        unknown = [f for f in faults if f not in FAULTS and f != "ok"]
        if unknown or kind not in self.scripts:
            raise ValueError(f"unknown fault {unknown} or kind {kind!r}")
        with self.lock:
            self.scripts[kind].extend(faults)

    def _next_fault(self, kind: str) -> str:
        with self.lock:
            for key in (kind, "any"):
                if self.scripts[key]:
                    return self.scripts[key].popleft()
        return self.always

    def count(self, kind: str | None = None, transcript: str | None = None) -> int:
        """Requests seen, optionally of one kind and one transcript."""
        with self.lock:
            return sum((kind is None or c["kind"] == kind) and (transcript is None or c["transcript"] == transcript)
                       for c in self.calls)

    # --- serving ----------------------------------------------------------------------------
    def answer(self, body: dict[str, Any], auth: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        text = _user_text(body)
        kind = "write" if "Listeners' split (JSON)" in text else "read" if "Analysis:" in text else "other"
        fault = self._next_fault(kind)
        with self.lock:
            self.calls.append({"kind": kind, "transcript": _transcript(text), "fault": fault, "auth": auth,
                               "body": body, "time": time.time()})
        if self.delay:
            time.sleep(self.delay)
        if fault == "429":
            return 429, {"retry-after": "0"}, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}
        if fault == "500":
            return 500, {}, {"error": {"message": "The server had an error", "type": "server_error"}}
        if fault == "401":
            return 401, {}, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
        if fault == "403":
            return 403, {}, {"error": {"message": "Project does not have access", "type": "invalid_request_error"}}
        if fault == "quota":
            return 429, {}, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                       "code": "insufficient_quota"}}
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if kind == "write":
            obj = write_answer(text)
        elif kind == "read":
            obj = read_answer(text, far=fault == "far")
        else:
            obj = {"note": "unrecognised request"}
        content = json.dumps(obj)
        if fault == "truncated":
            content = content[: len(content) // 2]
        elif fault == "wrong_schema":
            content = json.dumps({"keywords": "loud", "text": 3} if kind == "write" else {"dist": [0.5, 0.5]})
        prompt_tokens = sum(len(json.dumps(m.get("content"))) for m in body.get("messages", [])) // 4
        return 200, {}, {
            "id": f"chatcmpl-fake{len(self.calls)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4,
                      "total_tokens": prompt_tokens + len(content) // 4},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, headers, obj = 404, {}, {"error": {"message": f"no route {self.path}"}}
                else:
                    status, headers, obj = fake.answer(body, self.headers.get("authorization", ""))
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        return Handler

    def start(self) -> FakeOpenAI:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def base_url(self) -> str:
        assert self.server is not None, "start() the server first"
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
