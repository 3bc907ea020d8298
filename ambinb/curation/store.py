"""The store: one JSON line per curated utterance in ``runs/<dataset>/curation/cot.jsonl``.

Records are keyed by ``(utt_id, prompt_version)``; they are appended with flush and fsync, a rerun
skips finished keys, and a truncated last line left by a crash is dropped and redone
(:class:`CotStore`). A curation run holds the store's folder (:func:`ambinb.runlock.hold`), so two
runs never append at once; training reads the accepted think blocks through :func:`accepted_cots`.
Each record names the ``prosody_reference`` its audio step was worded against; one prompt version
holds one reference (:func:`check_same_reference`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ambinb.curation.errors import CurationError
from ambinb.paths import run_dir

log = logging.getLogger(__name__)

STORE_FILE = "cot.jsonl"
RECORD_COLUMNS = ["utt_id", "prompt_version", "status", "accepted", "cot", "p_gt", "validation", "validation_js",
                  "attempts", "backend", "model", "tokens", "error", "time", "prosody_reference"]
LEGACY_REFERENCE = "speaker"  # the prosody_reference of records written before it was recorded


class CotStore:
    """Append-only JSONL of curation records keyed by ``(utt_id, prompt_version)``.

    Each record is one line, written with a single ``write`` then flush and fsync, so a crash can
    only leave the last line without its newline. Reading drops such a tail (with a warning);
    :meth:`repair` cuts it off before appending, so it is redone, never duplicated. Any other
    unreadable line is an error naming the file and line.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _lines(self) -> tuple[list[dict[str, Any]], int]:
        """(records, byte length of the complete part of the file)."""
        if not self.path.exists():
            return [], 0
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run; "
                        "that utterance is redone", self.path, len(data) - complete)
        records = []
        for lineno, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}, line {lineno}: not a JSON record ({err.msg})") from err
            if not isinstance(rec, dict) or "utt_id" not in rec or "prompt_version" not in rec:
                raise ValueError(f"{self.path}, line {lineno}: a record needs utt_id and prompt_version")
            records.append(rec)
        return records, complete

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in file order (a later record for the same key supersedes)."""
        return self._lines()[0]

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last record of each ``(utt_id, prompt_version)`` key."""
        return {(r["utt_id"], r["prompt_version"]): r for r in self.records()}

    def repair(self) -> None:
        """Cut off a truncated last line, so the next append starts on a fresh line."""
        _, complete = self._lines()
        if self.path.exists() and self.path.stat().st_size > complete:
            with open(self.path, "r+b") as fh:
                fh.truncate(complete)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line, then flush and fsync."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def store_path(cfg: dict[str, Any]) -> Path:
    """``<run_root>/<dataset>/curation/cot.jsonl``."""
    return run_dir(cfg["dataset"], "curation", None, cfg["run_root"]) / STORE_FILE


def load_curated(path: str | os.PathLike, prompt_version: str | None = None) -> pd.DataFrame:
    """The store as a DataFrame, one row per ``(utt_id, prompt_version)`` (the latest record),
    optionally for one prompt version. Empty (with the record columns) when there is no store."""
    latest = CotStore(path).latest()
    rows = [r for r in latest.values() if prompt_version is None or r["prompt_version"] == prompt_version]
    return pd.DataFrame(rows, columns=RECORD_COLUMNS) if rows else pd.DataFrame(columns=RECORD_COLUMNS)


def check_same_reference(records: Iterable[dict[str, Any]], reference: str, version: str, path: Path) -> None:
    """Refuse records of ``version`` whose prosody was worded against another ``prosody_reference``.

    A record without the field was written before it was recorded (:data:`LEGACY_REFERENCE`).
    Example: records of v2 written with ``speaker``, ``reference="corpus"`` -> CurationError.
    """
    other = {r.get("prosody_reference", LEGACY_REFERENCE) for r in records if r["prompt_version"] == version}
    other -= {reference}
    if other:
        raise CurationError(f"{path} holds prompt_version {version!r} records whose prosody is worded against "
                            f"{sorted(other)}, not prosody_reference={reference!r}: set a new prompt_version "
                            "for this reference (or another run_root)")


def accepted_cots(cfg: dict[str, Any]) -> dict[str, str]:
    """``utt_id -> think block`` of the accepted records of ``cfg["prompt_version"]`` (for training).

    Raises:
        CurationError: the records were worded against another ``prosody_reference`` than ``cfg``'s.
    """
    path = store_path(cfg)
    check_same_reference(CotStore(path).latest().values(), cfg["prosody_reference"], cfg["prompt_version"], path)
    df = load_curated(path, cfg["prompt_version"])
    df = df[df["accepted"].astype(bool)] if len(df) else df
    return dict(zip(df["utt_id"].astype(str), df["cot"].astype(str), strict=True))
