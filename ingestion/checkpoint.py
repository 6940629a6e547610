"""The checkpoint file, `$CHECKPOINT_DIR/checkpoint.json`: what was finished, and what failed.

Format:
  {"processed_files": {path: {"timestamp", "status": "completed", "file_sha256", "size",
                              "mtime", "chunks", "tokens", "embedded_tokens", "seconds"}},
   "failed_files": {path: {"timestamp", "status": "failed", "reason", "attempts"}}}
Only original transcripts appear here (never split parts). A file is recorded as
processed only after all its chunks are stored.
"""
from __future__ import annotations

import time
from pathlib import Path

from ingestion.statefile import read_json


def empty() -> dict:
    return {"processed_files": {}, "failed_files": {}}


def _validate(c: dict) -> None:
    for name in ("processed_files", "failed_files"):
        if not isinstance(c.get(name), dict):
            raise ValueError(f"its {name!r} map is missing")


def load(path: Path) -> dict:
    return read_json(path, empty, _validate,
                     "run generate_file_queue.py: finished files are found again in the store")


def record_done(c: dict, path: str, **details) -> None:
    c["failed_files"].pop(path, None)
    c["processed_files"][path] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "completed",
                                  **details}


def record_failed(c: dict, path: str, reason: str, attempts: int) -> None:
    c["failed_files"][path] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "failed",
                               "reason": reason, "attempts": attempts}


def forget(c: dict, path: str) -> None:
    """The file changed: what was recorded for it no longer holds."""
    c["processed_files"].pop(path, None)
    c["failed_files"].pop(path, None)
