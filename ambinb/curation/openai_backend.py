"""The ``openai`` backend: writer and reader through any OpenAI-compatible chat endpoint.

GPT-4o by default, or a local server (vLLM, say) through ``base_url``. The writer returns JSON with
the think block's fields (:func:`ambinb.curation.chat.parse_generation` checks the schema); audio
goes as ``input_audio`` when ``send_audio``; the reader returns ``{"distribution": {...}}``
(:func:`ambinb.curation.chat.parse_validation`). Rate limits, server errors and timeouts are
retried with seeded exponential back-off; malformed answers use up an attempt and are recorded
with the reason. A server that refuses the key, cannot be reached or never gives a usable answer
stops the run (:class:`ambinb.curation.transport.Outage`).
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ambinb import cot
from ambinb.curation.chat import generation_messages, parse_generation, parse_validation, validation_messages
from ambinb.curation.errors import AttemptError, CurationError
from ambinb.curation.items import Item, Reply
from ambinb.curation.transport import Outage, call_with_retries

OPENAI_URL = "https://api.openai.com/v1"  # where the official client goes when base_url is ""


def api_key(cfg: dict[str, Any]) -> str:
    """The key from the environment variable named by ``api_key_env`` (never from a file).

    A local server (``base_url`` set) may need none: a placeholder is used then.
    """
    name = cfg["api_key_env"]
    if not name:
        raise CurationError("api_key_env is empty: set it to the NAME of the environment variable that holds "
                            "the key (OPENAI_API_KEY, say)")
    key = os.environ.get(name, "")
    if key:
        return key
    if cfg["base_url"]:
        return "no-key"
    raise CurationError(f"backend 'openai' needs an API key in the environment variable {name} "
                        "(api_key_env names it), or base_url pointing to a server that needs none")


class OpenAIBackend:
    """Writer and reader through an OpenAI-compatible chat endpoint (see the module docstring).

    Args:
        cfg: resolved parameters.
        client: an ``openai.OpenAI``-like client (None: one built from ``cfg``).
        sleep: how to wait before a retry (None: :meth:`Outage.wait`, which a stopped run cuts short).
    """

    name = "openai"

    def __init__(self, cfg: dict[str, Any], client: Any = None, sleep: Callable[[float], None] | None = None):
        from openai import OpenAI  # optional

        self.model = str(cfg["curation_model"])
        self.cfg = cfg
        self.client = client or OpenAI(api_key=api_key(cfg), base_url=cfg["base_url"] or None,
                                       timeout=float(cfg["curation_timeout"]), max_retries=0)
        url = str(getattr(self.client, "base_url", "") or cfg["base_url"] or OPENAI_URL).rstrip("/")
        self.outage = Outage(url, int(cfg["curation_give_up_after"]), float(cfg["curation_outage_s"]))
        self.sleep = sleep or self.outage.wait

    def _chat(self, messages: list[dict[str, Any]], rng: random.Random) -> tuple[str | None, dict[str, int]]:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages,
                                  "temperature": float(cfg["curation_temperature"]),
                                  "max_tokens": int(cfg["curation_max_tokens"])}
        if cfg["json_mode"]:
            kwargs["response_format"] = {"type": "json_object"}
        response = call_with_retries(lambda: self.client.chat.completions.create(**kwargs),
                                     int(cfg["curation_retries"]), float(cfg["backoff_base"]),
                                     float(cfg["backoff_max"]), rng, self.sleep, self.outage)
        usage = getattr(response, "usage", None)
        tokens = {"prompt": int(getattr(usage, "prompt_tokens", 0) or 0),
                  "completion": int(getattr(usage, "completion_tokens", 0) or 0)}
        choices = getattr(response, "choices", None) or []
        if not choices:
            self.outage.failure("unusable answer", "the answer has no choices")
            raise AttemptError("the answer has no choices", tokens)
        return choices[0].message.content, tokens

    def _unusable(self, err: AttemptError, role: str, tokens: dict[str, int]) -> AttemptError:
        """Report an answer that failed its schema to the outage watch (which may stop the run); the
        attempt's error."""
        self.outage.failure("unusable answer", f"{role}: {err}")
        return AttemptError(f"{role}: {err}", tokens)

    def _rng(self, item: Item, attempt: int, stage: str) -> random.Random:
        return random.Random(f"{self.cfg['seed']}:{item.utt_id}:{attempt}:{stage}")

    def generate(self, item: Item, attempt: int, feedback: np.ndarray | None = None) -> Reply:
        """One writer request: the think block, checked against the schema."""
        send_audio = bool(self.cfg["send_audio"])
        audio_b64 = None
        if send_audio and item.audio_path:
            audio_b64 = base64.b64encode(Path(item.audio_path).read_bytes()).decode("ascii")
        messages = generation_messages(item, send_audio, feedback, audio_b64)
        content, tokens = self._chat(messages, self._rng(item, attempt, "write"))
        try:
            parts = parse_generation(content)
        except AttemptError as err:
            raise self._unusable(err, "writer", tokens) from err
        self.outage.success()
        return Reply(cot=cot.render_think(parts["keywords"], parts["text"], parts["audio"], parts["synthesis"]),
                     tokens=tokens)

    def validate(self, item: Item, think: str) -> Reply:
        """One reader request: the distribution the think block implies."""
        content, tokens = self._chat(validation_messages(item, think), self._rng(item, 0, f"read:{think}"))
        try:
            q = parse_validation(content, list(item.classes))
        except AttemptError as err:
            raise self._unusable(err, "reader", tokens) from err
        self.outage.success()
        return Reply(distribution=q, tokens=tokens)
