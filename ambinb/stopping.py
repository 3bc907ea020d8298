"""Stop detection on token ids: a close tag found by a table lookup per token, on the device.

A rollout stops a row when its completion's text contains the answer close tag (``</answer>``),
whatever tokens spell it (``</answer>`` may be ``</`` ``answer`` ``>``, or end inside ``>\\n``). Instead
of decoding each row's last tokens at every step, :func:`tag_automaton` precomputes, once per
tokenizer and tag, the tag's string-matching automaton (Knuth-Morris-Pratt over bytes) advanced by
every token of the vocabulary: ``table[token, state]`` is the number of the tag's leading bytes that
the text ends with after that token (``length`` once the tag was seen; it stays there). Special
tokens leave the state unchanged (decoding skips them), ids past the tokenizer's vocabulary too.

Per decode step a rollout then does ``state = table[next_ids, state]`` on the device and stops the
rows where ``state == length``: no decode, no host work per row.

Example (tag ``"</answer>"``, length 9): state 0, token ``</`` -> 2, token ``answer`` -> 8, token
``>\\n`` -> 9 (found); token ``x`` from any state below 9 -> 0.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class TagAutomaton:
    """``table`` (V, length) int64: the state after a token from each state; ``length`` means found."""

    tag: str
    table: torch.Tensor
    length: int

    def to(self, device: Any, vocab_size: int | None = None) -> TagAutomaton:
        """This automaton on ``device``, with identity rows added up to ``vocab_size`` ids (a padded head)."""
        table = self.table
        if vocab_size is not None and vocab_size > table.shape[0]:
            extra = torch.arange(self.length).expand(vocab_size - table.shape[0], self.length)
            table = torch.cat([table, extra])
        return TagAutomaton(self.tag, table.to(device), self.length)

    def step(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The next states (R,) after ``tokens`` (R,) from ``state`` (R,); found rows stay found."""
        found = state >= self.length
        nxt = self.table[tokens, state.clamp(max=self.length - 1)]
        return torch.where(found, state, nxt)


def kmp_table(tag: bytes) -> np.ndarray:
    """The byte automaton of ``tag``: ``delta[q, b]`` = matched length after byte ``b`` in state ``q``.

    Row ``len(tag)`` is absorbing. Example: ``kmp_table(b"aab")[2, ord("a")]`` = 2 (``"aaa"`` ends with ``"aa"``).
    """
    n = len(tag)
    delta = np.zeros((n + 1, 256), dtype=np.int64)
    delta[0, tag[0]] = 1
    border = 0
    for q in range(1, n):
        delta[q] = delta[border]
        delta[q, tag[q]] = q + 1
        border = delta[border, tag[q]]
    delta[n] = n
    return delta


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each id's bytes as decoding writes them (byte-level BPE undone); None for special tokens (skipped).

    Example (Qwen's vocabulary): id 198 (``Ċ``) -> ``b"\\n"``; id 151645 (``<|im_end|>``) -> None.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # heavy

    to_latin1 = {ord(c): chr(b) for b, c in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    out: list[bytes | None] = [b""] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        if i in special:
            out[i] = None
            continue
        try:
            out[i] = text.encode() if i in added else text.translate(to_latin1).encode("latin-1")
        except UnicodeEncodeError:  # not byte-level: the token's own text
            out[i] = text.encode()
    return out


def _advance_all(delta: np.ndarray, pieces: list[bytes | None], n: int) -> np.ndarray:
    """The states (V, n) after each token from each start state 0..n-1, all tokens at once."""
    lengths = np.array([len(p) if p else 0 for p in pieces])
    width = max(int(lengths.max()), 1)
    data = np.zeros((len(pieces), width), dtype=np.int64)
    flat = np.frombuffer(b"".join(p for p in pieces if p), dtype=np.uint8)
    rows = np.repeat(np.arange(len(pieces)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    data[rows, np.arange(len(flat)) - starts] = flat
    state = np.broadcast_to(np.arange(n), (len(pieces), n)).copy()
    for pos in range(width):
        live = np.nonzero(lengths > pos)[0]
        state[live] = delta[state[live], data[live, pos : pos + 1]]
    return state


def tag_automaton(tokenizer: Any, tag: str) -> TagAutomaton:
    """The :class:`TagAutomaton` of ``tag`` over ``tokenizer``'s vocabulary (computed once per tokenizer)."""
    per_tok = _CACHE.setdefault(tokenizer, {}) if _weakrefable(tokenizer) else {}
    if tag not in per_tok:
        raw = tag.encode()
        pieces = token_bytes(tokenizer)
        table = torch.from_numpy(_advance_all(kmp_table(raw), pieces, len(raw)))
        per_tok[tag] = TagAutomaton(tag, table, len(raw))
    return per_tok[tag]


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False
