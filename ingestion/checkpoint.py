"""The checkpoint file, `$CHECKPOINT_DIR/checkpoint.json`: what was finished, and what failed.

Format:
  {"processed_files": {path: {"timestamp", "status": "completed", "file_sha256", "size",
                              "mtime", "chunks", "tokens", "embedded_tokens", "seconds"}},
   "failed_files": {path: {"timestamp", "status": "failed", "reason", "attempts"}},
   "store": {"address", "collection"}}
Only original transcripts appear here (never split parts). A file is recorded as
processed only after all its chunks are stored. Only this module reads or writes
those keys.
"""
from __future__ import annotations

import time
from pathlib import Path

from ingestion.atomicfile import read_json


def empty() -> dict:
    return {"processed_files": {}, "failed_files": {}}


def _validate(c: dict) -> None:
    for name in ("processed_files", "failed_files"):
        if not isinstance(c.get(name), dict):
            raise ValueError(f"its {name!r} map is missing")


def load(path: Path) -> tuple[dict, str | None]:
    return read_json(path, empty, _validate,
                     "run generate_file_queue.py: finished files are found again in the store")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def record_done(c: dict, path: str, **details) -> None:
    c["failed_files"].pop(path, None)
    c["processed_files"][path] = {"timestamp": _now(), "status": "completed", **details}


def record_failed(c: dict, path: str, reason: str, attempts: int) -> None:
    c["failed_files"][path] = {"timestamp": _now(), "status": "failed", "reason": reason, "attempts": attempts}


def forget(c: dict, path: str) -> None:
    """The file changed or is gone: what was recorded for it no longer holds."""
    c["processed_files"].pop(path, None)
    c["failed_files"].pop(path, None)


def forget_failure(c: dict, path: str) -> None:
    c["failed_files"].pop(path, None)


def done(c: dict, path: str) -> dict | None:
    return c["processed_files"].get(path)


def done_files(c: dict) -> dict[str, dict]:
    return c["processed_files"]


def touch(c: dict, path: str, size: int, mtime: float) -> None:
    """The file was touched, not changed: its new size and mtime."""
    c["processed_files"][path].update(size=size, mtime=mtime)


def store_of(c: dict) -> dict | None:
    return c.get("store")


def set_store(c: dict, address: str, collection: str) -> None:
    c["store"] = {"address": address, "collection": collection}
