"""The two failures of curation: one stops the whole run, the other uses up one attempt."""

from __future__ import annotations


class CurationError(RuntimeError):
    """A problem that stops the whole curation run (bad configuration, rejected credentials, a server
    that cannot be reached)."""


class AttemptError(Exception):
    """One attempt failed (malformed answer, wrong schema, transport gave up); tokens spent so far."""

    def __init__(self, message: str, tokens: dict[str, int] | None = None):
        super().__init__(message)
        self.tokens = tokens or {"prompt": 0, "completion": 0}
