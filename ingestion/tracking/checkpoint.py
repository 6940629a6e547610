"""The checkpoint, `$CHECKPOINT_DIR/checkpoint.json`: what was finished, and what failed.

Format:
  {"processed_files": {path: {"timestamp", "status": "completed", "file_sha256", "size",
                              "mtime", "chunks", "tokens", "embedded_tokens", "seconds"}},
   "failed_files": {path: {"timestamp", "status": "failed", "reason", "attempts"}},
   "store": {"address", "collection"}}
Only original transcripts appear here (never split parts). A file is recorded as
processed only after all its chunks are stored.

A file's outcome does not rewrite the whole checkpoint (that would cost more the
bigger the corpus): it appends one line to `checkpoint.journal` beside it (JSON, fsynced),
and reading the checkpoint replays the journal over checkpoint.json. A transaction that
loads the whole checkpoint writes checkpoint.json afresh and removes the journal; so does
an outcome once the journal passes JOURNAL_MAX_BYTES. Replaying is idempotent (each line
carries its record), so a kill between the two steps loses and doubles nothing; a torn
line (a kill while appending) is skipped. Only this module reads or writes these files.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from ingestion.common.atomicfile import read_json
from ingestion.common.errors import StateFileError

JOURNAL_MAX_BYTES = 1 << 20


class Changes:
    """Outcomes to append to the journal (a transaction that does not load the checkpoint)."""

    def __init__(self):
        self.ops: list[dict] = []


def empty() -> dict:
    return {"processed_files": {}, "failed_files": {}}


def _validate(c: dict) -> None:
    for name in ("processed_files", "failed_files"):
        if not isinstance(c.get(name), dict):
            raise ValueError(f"its {name!r} map is missing")


def journal_path(path: Path) -> Path:
    return path.with_suffix(".journal")


def load(path: Path) -> tuple[dict, str | None]:
    """The checkpoint with its journal replayed, and checkpoint.json's own text."""
    data, text = read_json(path, empty, _validate,
                           "run generate_file_queue.py: finished files are found again in the store")
    try:
        with open(journal_path(path), "rb") as f:
            for line in f:
                try:
                    op = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn line (a kill while appending): that outcome never reached the queue
                apply(data, op)
                text = None  # checkpoint.json alone is not the whole truth: it will be rewritten
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StateFileError(f"cannot read {journal_path(path)}: {e.strerror or e}") from None
    return data, text


def append(path: Path, changes: Changes) -> bool:
    """Append the changes to the journal; True when it has grown enough to be folded in."""
    if not changes.ops:
        return False
    journal = journal_path(path)
    try:
        with open(journal, "a+b") as f:
            lines = b"".join(orjson.dumps(op) + b"\n" for op in changes.ops)
            if f.tell() > 0 and os.pread(f.fileno(), 1, f.tell() - 1) != b"\n":
                lines = b"\n" + lines  # after a torn line: start a fresh one
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
            return f.tell() > JOURNAL_MAX_BYTES
    except OSError as e:
        raise StateFileError(f"cannot write {journal}: {e.strerror or e}") from None


def folded(path: Path) -> None:
    """checkpoint.json now holds everything: the journal goes."""
    try:
        os.unlink(journal_path(path))
    except FileNotFoundError:
        pass


def apply(c: dict, op: dict) -> None:
    kind, path = op["op"], op["path"]
    if kind == "done":
        c["failed_files"].pop(path, None)
        c["processed_files"][path] = op["record"]
    elif kind == "failed":
        c["failed_files"][path] = op["record"]
    elif kind == "forget":
        c["processed_files"].pop(path, None)
        c["failed_files"].pop(path, None)
    elif kind == "forget_failure":
        c["failed_files"].pop(path, None)
    elif kind == "touch" and path in c["processed_files"]:
        c["processed_files"][path].update(op["record"])


def _do(c: dict | Changes, op: dict) -> None:
    if isinstance(c, Changes):
        c.ops.append(op)
    else:
        apply(c, op)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def record_done(c: dict | Changes, path: str, **details) -> None:
    _do(c, {"op": "done", "path": path, "record": {"timestamp": _now(), "status": "completed", **details}})


def record_failed(c: dict | Changes, path: str, reason: str, attempts: int) -> None:
    _do(c, {"op": "failed", "path": path, "record": {"timestamp": _now(), "status": "failed", "reason": reason,
                                                      "attempts": attempts}})


def forget(c: dict | Changes, path: str) -> None:
    """The file changed or is gone: what was recorded for it no longer holds."""
    _do(c, {"op": "forget", "path": path})


def forget_failure(c: dict | Changes, path: str) -> None:
    _do(c, {"op": "forget_failure", "path": path})


def touch(c: dict | Changes, path: str, size: int, mtime: float) -> None:
    """The file was touched, not changed: its new size and mtime."""
    _do(c, {"op": "touch", "path": path, "record": {"size": size, "mtime": mtime}})


def done(c: dict, path: str) -> dict | None:
    return c["processed_files"].get(path)


def done_files(c: dict) -> dict[str, dict]:
    return c["processed_files"]


def store_of(c: dict) -> dict | None:
    return c.get("store")


def set_store(c: dict, address: str, collection: str) -> None:
    c["store"] = {"address": address, "collection": collection}
