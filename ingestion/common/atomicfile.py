"""Safe JSON state files: one lock for the state folder, atomic writes, a backup.

Every write goes to a temp file in the same folder, is fsynced, then renamed over
the old file, so a kill or a full disk leaves either the old or the new version,
never half of one. The previous version is kept as `NAME.bak` (a hard link, so
keeping it costs nothing) and is used when the main file turns out unreadable.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

import orjson

from ingestion.common.errors import StateFileError, StoreBusy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(lock_path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on lock_path; the kernel frees it if the process dies."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StateFileError(f"cannot use the folder {lock_path.parent} for state files: {e.strerror or e} "
                             "(check CHECKPOINT_DIR)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StoreBusy(f"{lock_path} is held by another process") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def replacing(path: Path, backup: bool = False) -> Iterator[IO[str]]:
    """Write path's new content to the yielded file: temp file in the same folder, fsync, rename.

    An error in the block (or a full disk) leaves the old file as it was and no temp file.
    backup: keep the old version as NAME.bak (a hard link, so it costs nothing)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StateFileError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if backup and path.exists():
            backup_tmp = path.with_name(f".{path.name}.bak.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup_tmp)
            os.link(path, backup_tmp)
            os.replace(backup_tmp, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise StateFileError(f"cannot write {path}: {e.strerror or e}; the previous version is intact") \
                from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace path with text, keeping the old version as NAME.bak."""
    with replacing(path, backup=True) as f:
        f.write(text)


def _parse(path: Path, validate: Callable[[dict], None]) -> tuple[dict, str]:
    """Read and validate one JSON state file; raise ValueError saying what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    validate(data)
    return data, text


def read_json(path: Path, empty: Callable[[], dict], validate: Callable[[dict], None],
              how_to_rebuild: str) -> tuple[dict, str | None]:
    """Load a state file and its text; a missing file is empty; a damaged one falls back to its backup.

    Never resets silently: with no usable backup it raises StateFileError naming the
    file and how to recover.
    """
    if not path.exists():
        return empty(), None
    try:
        return _parse(path, validate)
    except OSError as e:
        raise StateFileError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as problem:
        backup = path.with_name(path.name + ".bak")
        try:
            data, _ = _parse(backup, validate)
        except (OSError, ValueError):
            raise StateFileError(
                f"{path} is damaged ({problem}) and has no usable backup; "
                f"move it aside and {how_to_rebuild}") from None
        log.warning("%s is damaged (%s); using its backup %s (one write older)", path, problem, backup)
        text = orjson.dumps(data).decode("utf-8")
        write_atomic(path, text)
        return data, text
