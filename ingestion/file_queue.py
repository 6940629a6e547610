"""The queue file, `$CHECKPOINT_DIR/file_queue.json`, and every change made to it.

Format (the four lists keep these names and meanings; operators read them):
  {"pending": [path...], "processing": [path...], "completed": [path...], "failed": [path...],
   "files": {path: {"size", "mtime", "attempts", "reason", "lease", "part_of", "parts", ...}}}
Paths are absolute. A path is in at most one list. `files` holds what we know of each
path: its lease while processing ({"pid", "child_pid", "host", "started", "renewed"}),
the reason it failed, its attempt count; a split part names its original (`part_of`),
an original that was split lists its parts (`parts`) and is in no list until they
are all completed.

Functions here change the queue dict in memory; `state.transaction()` loads and
saves it under the state lock.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

from ingestion.errors import StateFileError
from ingestion.statefile import read_json

LISTS = ("pending", "processing", "completed", "failed")


def empty() -> dict:
    return {"pending": [], "processing": [], "completed": [], "failed": [], "files": {}}


def _validate(q: dict) -> None:
    for name in LISTS:
        if not isinstance(q.get(name), list):
            raise ValueError(f"its {name!r} list is missing")
    q.setdefault("files", {})


def load(path: Path) -> dict:
    return read_json(path, empty, _validate,
                     "run generate_file_queue.py to rebuild it from the transcripts folder "
                     "and what the store already holds (nothing stored is embedded again)")


def where(q: dict, path: str) -> str | None:
    """Which list holds path, if any."""
    for name in LISTS:
        if path in q[name]:
            return name
    return None


def move(q: dict, path: str, to: str | None, front: bool = False) -> None:
    """Put path in list `to` (None: in no list), taking it out of the others."""
    for name in LISTS:
        while path in q[name]:
            q[name].remove(path)
    if to:
        q[to].insert(0, path) if front else q[to].append(path)


def info(q: dict, path: str) -> dict:
    return q["files"].setdefault(path, {})


def claim(q: dict, path: str | None = None, accept: Callable[[str], bool] = lambda p: True) -> str | None:
    """Move path (or the first acceptable pending file) to processing with a lease for this process."""
    if path is None:
        path = next((p for p in q["pending"] if accept(p)), None)
        if path is None:
            return None
    elif where(q, path) == "processing":
        raise StateFileError(f"{path} is already being processed (lease: {info(q, path).get('lease')})")
    move(q, path, "processing")
    now = time.time()
    entry = info(q, path)
    entry["lease"] = {"pid": os.getpid(), "child_pid": None, "host": socket.gethostname(),
                      "started": now, "renewed": now}
    entry.pop("reason", None)
    return path


def lease_alive(lease: dict | None, lease_seconds: float, now: float | None = None) -> bool:
    """A lease is alive while one of its processes runs on this host, or, for
    another host's lease, until it is lease_seconds old without renewal."""
    if not lease:
        return False
    now = time.time() if now is None else now
    if lease.get("host") == socket.gethostname():
        return any(pid_alive(lease.get(k)) for k in ("pid", "child_pid"))
    return now - lease.get("renewed", lease.get("started", 0)) < lease_seconds


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (dead, not yet reaped by its parent) holds nothing
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def release_stale(q: dict, lease_seconds: float) -> list[str]:
    """Return processing entries whose owner is gone (or lease expired) to the front of pending."""
    stale = [p for p in q["processing"] if not lease_alive(info(q, p).get("lease"), lease_seconds)]
    for path in stale:
        release(q, path)
    return stale


def release(q: dict, path: str) -> None:
    """Give a claimed file back, first in line, with no attempt counted."""
    info(q, path).pop("lease", None)
    move(q, path, "pending", front=True)


def complete(q: dict, path: str) -> None:
    entry = info(q, path)
    entry.pop("lease", None)
    entry.pop("reason", None)
    move(q, path, "completed")


def fail(q: dict, path: str, reason: str) -> None:
    entry = info(q, path)
    entry.pop("lease", None)
    entry["reason"] = reason
    entry["attempts"] = entry.get("attempts", 0) + 1
    move(q, path, "failed")


def retry_later(q: dict, path: str, reason: str, max_attempts: int) -> bool:
    """After a transient error: back to the end of pending, or failed once out of attempts.

    Returns True when the file was requeued."""
    entry = info(q, path)
    attempts = entry.get("attempts", 0) + 1
    if attempts >= max_attempts:
        fail(q, path, f"{reason} (gave up after {attempts} attempts)")
        return False
    entry.pop("lease", None)
    entry["attempts"] = attempts
    entry["last_error"] = reason
    move(q, path, "pending")
    return True


def replace_with_parts(q: dict, path: str, parts: list[str], original: str) -> None:
    """A file that ran out of memory: its parts go first in pending; it leaves the lists.

    The original then waits (in no list) for its `parts`; a part split again is
    replaced by its own parts in that list."""
    move(q, path, None)
    if path == original:
        entry = info(q, path)
        entry.pop("lease", None)
        entry["parts"] = parts
    else:
        siblings = info(q, original).get("parts", [])
        i = siblings.index(path) if path in siblings else len(siblings)
        info(q, original)["parts"] = siblings[:i] + parts + siblings[i + 1:]
        q["files"].pop(path, None)
    for part in reversed(parts):
        info(q, part)["part_of"] = original
        move(q, part, "pending", front=True)


def original_of(q: dict, path: str) -> str:
    return q["files"].get(path, {}).get("part_of") or path


def counts(q: dict) -> dict[str, int]:
    return {name: len(q[name]) for name in LISTS}
