"""The queue file, `$CHECKPOINT_DIR/file_queue.json`: its format, and every change made to it.

Format (the four lists keep these names and meanings; operators read them):
  {"pending": [path...], "processing": [path...], "completed": [path...], "failed": [path...],
   "files": {path: {"size", "mtime", "sha256", "attempts", "reason", "lease", "part_of", "parts", ...}},
   (a completed file has no entry in `files`: the checkpoint holds what was finished)
   "store": {"address", "collection"}}
Paths are absolute and canonical (see paths.py). A path is in at most one list.
`files` holds what we know of each path: its lease while processing ({"pid",
"child_pid", "host", "started", "renewed"}), the reason it failed, its attempt
count; a split part names its original (`part_of`), an original that was split
lists its parts (`parts`) and is in no list until they are all completed. `store`
names the store and collection the queue describes: a queue of another collection
is not trusted (the worker rebuilds it).

Only this module reads or writes those keys. Functions here change the queue dict
in memory; `state.transaction()` loads and saves it under the state lock.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

from ingestion.common.atomicfile import read_json
from ingestion.common.procinfo import pid_alive
from ingestion.tracking.paths import canonical, looks_canonical

# The four lists (the queue states): their names are the file format, read by operators' one-liners.
PENDING, PROCESSING, COMPLETED, FAILED = "pending", "processing", "completed", "failed"
LISTS = (PENDING, PROCESSING, COMPLETED, FAILED)


def empty() -> dict:
    return {PENDING: [], PROCESSING: [], COMPLETED: [], FAILED: [], "files": {}}


def _validate(q: dict) -> None:
    for name in LISTS:
        if not isinstance(q.get(name), list):
            raise ValueError(f"its {name!r} list is missing")
    if not isinstance(q.get("files"), dict):
        q["files"] = {}


def normalise(q: dict, roots: list[Path]) -> None:
    """A hand-edited queue: odd spellings (`a/./b`, `a/../b`, relative) become one canonical path,
    a path in two lists stays in the furthest one (completed, failed, processing, pending).
    Called once a run, where runs start (not on every load: it costs a pass over the queue)."""
    if all(looks_canonical(p) for name in LISTS for p in q[name]) and \
            sum(len(q[name]) for name in LISTS) == len({p for name in LISTS for p in q[name]}):
        return
    seen: set[str] = set()
    for name in (COMPLETED, FAILED, PROCESSING, PENDING):
        kept = []
        for p in q[name]:
            c = p if looks_canonical(p) else canonical(p, roots)
            if c != p and p in q["files"]:
                q["files"].setdefault(c, q["files"].pop(p))
            if c not in seen:
                seen.add(c)
                kept.append(c)
        q[name] = kept


def load(path: Path) -> tuple[dict, str | None]:
    return read_json(path, empty, _validate,
                     "run generate_file_queue.py to rebuild it from the transcripts folder "
                     "and what the store already holds (nothing stored is embedded again)")


# ---- which store the queue describes --------------------------------------------
def store_of(q: dict) -> dict | None:
    return q.get("store")


def set_store(q: dict, address: str, collection: str) -> None:
    q["store"] = {"address": address, "collection": collection}


# ---- lists ---------------------------------------------------------------------
def completed_in(path: Path) -> Callable[[], set[str]]:
    """The paths completed in the queue file at path, read when asked (none when there is no queue yet)."""
    return lambda: set(load(path)[0][COMPLETED]) if path.exists() else set()


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


def counts(q: dict) -> dict[str, int]:
    return {name: len(q[name]) for name in LISTS}


def paths(q: dict, name: str) -> list[str]:
    return list(q[name])


def known(q: dict) -> list[str]:
    """Every path the queue knows something of."""
    return list(q["files"])


def forget(q: dict, path: str) -> None:
    """path leaves the queue entirely (a transcript deleted from the folder)."""
    move(q, path, None)
    q["files"].pop(path, None)


# ---- what is known of a file -------------------------------------------------------
def _info(q: dict, path: str) -> dict:
    return q["files"].setdefault(path, {})


def details(q: dict, path: str) -> dict:
    """A copy of what is known of path (size, mtime, sha256, reason, attempts, ...)."""
    return dict(q["files"].get(path, {}))


def note(q: dict, path: str, **facts) -> None:
    """Record facts of path (size, mtime, sha256, chunks, tokens, ...); None removes one."""
    entry = _info(q, path)
    for key, value in facts.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value


def reason(q: dict, path: str) -> str:
    return q["files"].get(path, {}).get("reason", "unknown")


# ---- leases --------------------------------------------------------------------
def claim(q: dict, path: str | None = None, accept: Callable[[str], bool] = lambda p: True,
          owner_pid: int | None = None, child_pid: int | None = None) -> str | None:
    """Move path (or the first acceptable pending file) to processing with a lease for owner_pid
    (default: this process) and its child_pid, if the work happens in a child.

    Returns None when there is nothing to claim, or when path is already being processed."""
    if path is None:
        path = next((p for p in q[PENDING] if accept(p)), None)
        if path is None:
            return None
    elif where(q, path) == PROCESSING:
        return None
    move(q, path, PROCESSING)
    now = time.time()
    entry = _info(q, path)
    entry["lease"] = {"pid": owner_pid or os.getpid(), "child_pid": child_pid,
                      "host": socket.gethostname(), "started": now, "renewed": now}
    entry.pop("reason", None)
    return path


def lease(q: dict, path: str) -> dict | None:
    return q["files"].get(path, {}).get("lease")


def renew(q: dict, path: str) -> None:
    if lease(q, path) is not None:
        q["files"][path]["lease"]["renewed"] = time.time()


def held_by(q: dict, pid: int) -> list[str]:
    """Files in processing whose lease names pid (as the worker or as its child) on this host."""
    host = socket.gethostname()
    return [p for p in q[PROCESSING]
            if (lease(q, p) or {}).get("host") == host and pid in ((lease(q, p) or {}).get("pid"),
                                                                    (lease(q, p) or {}).get("child_pid"))]


def lease_alive(lease: dict | None, lease_seconds: float, now: float | None = None) -> bool:
    """A lease is alive while one of its processes runs on this host, or, for
    another host's lease, until it is lease_seconds old without renewal."""
    if not lease:
        return False
    now = time.time() if now is None else now
    if lease.get("host") == socket.gethostname():
        return any(pid_alive(lease.get(k)) for k in ("pid", "child_pid"))
    return now - lease.get("renewed", lease.get("started", 0)) < lease_seconds


def release_stale(q: dict, lease_seconds: float) -> list[str]:
    """Return processing entries whose owner is gone (or lease expired) to the front of pending."""
    stale = [p for p in q[PROCESSING] if not lease_alive(lease(q, p), lease_seconds)]
    for path in stale:
        release(q, path)
    return stale


# ---- outcomes (outcomes.py calls these, with the checkpoint, in one transaction) -----------
def release(q: dict, path: str) -> None:
    """Give a claimed file back, first in line, with no attempt counted."""
    _info(q, path).pop("lease", None)
    move(q, path, PENDING, front=True)


def complete(q: dict, path: str) -> None:
    """Done: what the queue knew of it goes (the checkpoint records the finished file), so the
    queue grows with what is still to do, not with the corpus. A split part keeps its `part_of`."""
    original = q["files"].get(path, {}).get("part_of")
    q["files"].pop(path, None)
    if original:
        q["files"][path] = {"part_of": original}
    move(q, path, COMPLETED)


def fail(q: dict, path: str, why: str) -> int:
    """Returns the attempts counted."""
    entry = _info(q, path)
    entry.pop("lease", None)
    entry["reason"] = why
    entry["attempts"] = entry.get("attempts", 0) + 1
    move(q, path, FAILED)
    return entry["attempts"]


def requeue(q: dict, path: str) -> None:
    """Back to pending (a changed file, --retry-failed): attempts start again."""
    entry = _info(q, path)
    for key in ("lease", "reason", "attempts", "last_error"):
        entry.pop(key, None)
    move(q, path, PENDING)


def retry_later(q: dict, path: str, why: str, max_attempts: int) -> bool:
    """After a transient error: back to the end of pending, or failed once out of attempts.

    Returns True when the file was requeued."""
    entry = _info(q, path)
    attempts = entry.get("attempts", 0) + 1
    if attempts >= max_attempts:
        fail(q, path, f"{why} (gave up after {attempts} attempts)")
        return False
    entry.pop("lease", None)
    entry["attempts"] = attempts
    entry["last_error"] = why
    move(q, path, PENDING)
    return True


def count_kill(q: dict, path: str) -> int:
    """Its process was killed (SIGKILL): returns how many times that happened to it."""
    entry = _info(q, path)
    entry["kills"] = entry.get("kills", 0) + 1
    return entry["kills"]


def attempts(q: dict, path: str) -> int:
    return q["files"].get(path, {}).get("attempts", 0)


# ---- split files ---------------------------------------------------------------
def replace_with_parts(q: dict, path: str, parts: list[str], original: str) -> None:
    """A file that ran out of memory: its parts go first in pending; it leaves the lists.

    The original then waits (in no list) for its `parts`; a part split again is
    replaced by its own parts in that list."""
    move(q, path, None)
    if path == original:
        entry = _info(q, path)
        entry.pop("lease", None)
        entry["parts"] = parts
    else:
        siblings = _info(q, original).get("parts", [])
        i = siblings.index(path) if path in siblings else len(siblings)
        _info(q, original)["parts"] = siblings[:i] + parts + siblings[i + 1:]
        q["files"].pop(path, None)
    for part in reversed(parts):
        _info(q, part)["part_of"] = original
        move(q, part, PENDING, front=True)


def original_of(q: dict, path: str) -> str:
    return q["files"].get(path, {}).get("part_of") or path


def parts_of(q: dict, original: str) -> list[str]:
    return list(q["files"].get(original, {}).get("parts", []))


def is_part(q: dict, path: str) -> bool:
    return bool(q["files"].get(path, {}).get("part_of"))


def parts_done(q: dict, original: str) -> bool:
    parts = parts_of(q, original)
    return bool(parts) and all(p in q[COMPLETED] for p in parts)


def split_waiting(q: dict) -> list[str]:
    """Originals whose parts are all completed: ready to be finished."""
    return [p for p, e in q["files"].items() if e.get("parts") and parts_done(q, p)]


def drop_parts(q: dict, original: str) -> list[str]:
    """The original is finished (or changed): its parts leave the queue. Returns them."""
    parts = parts_of(q, original)
    for part in parts:
        forget(q, part)
    q["files"].get(original, {}).pop("parts", None)
    return parts
