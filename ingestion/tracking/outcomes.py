"""A file's fate, decided in one place: every outcome is one transaction over queue and checkpoint.

    complete  all its chunks are stored: `completed`, recorded as done
    fail      a problem of the file itself: `failed` with the reason (queue and checkpoint)
    retry     a transient problem (API down, file changing): back to pending, or failed
              once out of MAX_ATTEMPTS
    release   a problem of the run (store, key, settings, a signal): back to the front of
              pending, no attempt counted
    defer     another worker holds it: back to the end of pending, no attempt counted
    split     out of memory: its parts replace it in pending
    after_death  its process died without an outcome: one of the above

The job (one file, in the process that ingests it) and the worker (after a child's
death) both call these; neither edits the queue or the checkpoint itself.
"""
from __future__ import annotations

import logging
import os
import signal

from ingestion.common.errors import (EXIT_API_DOWN, EXIT_FILE_FAILED, EXIT_INTERRUPTED, EXIT_MEMORY, EXIT_OK,
                                     outcome_name)
from ingestion.common.settings import Config
from ingestion.tracking import checkpoint, file_queue, state

log = logging.getLogger("ingestion")
# A file's fates, named as the exit-code table names them (the worker's tally counts them by these names)
COMPLETED, FAILED, REQUEUED, SPLIT, RELEASED = (outcome_name(code) for code in (
    EXIT_OK, EXIT_FILE_FAILED, EXIT_API_DOWN, EXIT_MEMORY, EXIT_INTERRUPTED))


def _failed(q: dict, c: checkpoint.Changes, path: str, reason: str) -> None:
    attempts = file_queue.fail(q, path, reason)
    original = file_queue.original_of(q, path)
    checkpoint.record_failed(c, original, reason if path == original else f"part {path}: {reason}", attempts)


def fail(cfg: Config, path: str, reason: str) -> None:
    with state.transaction(cfg, checkpoint="append") as (q, c):
        _failed(q, c, path, reason)
    log.error("failed %s: %s", path, reason)


def retry(cfg: Config, path: str, reason: str) -> bool:
    """Returns True when the file was requeued, False when it failed for good."""
    with state.transaction(cfg, checkpoint="append") as (q, c):
        attempts = file_queue.attempts(q, path) + 1
        if attempts >= cfg.max_attempts:
            _failed(q, c, path, f"{reason} (gave up after {attempts} attempts)")
            requeued = False
        else:
            requeued = file_queue.retry_later(q, path, reason, cfg.max_attempts)
    log.warning("%s: %s; %s", path, reason, "back to pending" if requeued else "failed")
    return requeued


def release(cfg: Config, path: str) -> None:
    with state.transaction(cfg, checkpoint=False) as (q, _):
        if file_queue.where(q, path) == file_queue.PROCESSING:
            file_queue.release(q, path)


def defer(cfg: Config, path: str) -> None:
    with state.transaction(cfg, checkpoint=False) as (q, _):
        file_queue.note(q, path, lease=None)
        file_queue.move(q, path, file_queue.PENDING)


def complete(cfg: Config, path: str, original: str, file_sha: str, size: int, mtime: float,
             done: dict) -> bool:
    """Record a stored file (or part). done: chunks, tokens, embedded_tokens, seconds.

    Returns True when it was the last part of a split file still to finish."""
    part = path != original
    with state.transaction(cfg, checkpoint="append") as (q, c):
        file_queue.complete(q, path)
        if not part:
            checkpoint.record_done(c, path, file_sha256=file_sha, size=size, mtime=mtime, **done)
        return part and file_queue.parts_done(q, original)


def finish_split(cfg: Config, original: str, parts: list[str], file_sha: str, chunks: int, tokens: int) -> None:
    """All parts of a split file are stored: the original is done, its parts leave the queue."""
    st = os.stat(original) if os.path.exists(original) else None
    with state.transaction(cfg, checkpoint="append") as (q, c):
        file_queue.drop_parts(q, original)
        file_queue.complete(q, original)
        checkpoint.record_done(c, original, file_sha256=file_sha, size=st.st_size if st else None,
                               mtime=st.st_mtime if st else None, chunks=chunks, tokens=tokens,
                               split_into=len(parts))


def split(cfg: Config, path: str, parts: list[str], original: str, original_sha: str) -> None:
    with state.transaction(cfg, checkpoint=False) as (q, _):
        file_queue.note(q, original, sha256=original_sha)
        file_queue.replace_with_parts(q, path, parts, original)


def after_death(cfg: Config, path: str, rc: int | None, oom_seen: bool, stopping: bool) -> str:
    """Its process died while the file was in processing. Returns the outcome's name (errors.EXIT_CODES), SPLIT
    when the caller must split the file (out of memory).

    rc: its exit status (negative: the signal), None when it cannot be known (its fork server
    died first: CPython then reports 255). stopping: the worker was stopping, so it had sent
    the process SIGTERM and, after GRACE_SECONDS, SIGKILL: a death it caused is never evidence
    of anything about the file (not of memory: no kill is counted toward splitting)."""
    with state.transaction(cfg, checkpoint="append") as (q, c):
        where = file_queue.where(q, path)
        if where != file_queue.PROCESSING:
            return {file_queue.COMPLETED: COMPLETED, file_queue.FAILED: FAILED,
                    file_queue.PENDING: REQUEUED}.get(where, SPLIT)
        if rc is None or stopping or rc in (-signal.SIGTERM, EXIT_INTERRUPTED):
            file_queue.release(q, path)
            if rc is None:
                log.warning("%s: its process ended after the fork server was lost (exit status unknown); "
                            "back to pending", path)
            elif rc == -signal.SIGKILL:
                log.warning("%s: its process was killed by the worker (still busy after GRACE_SECONDS=%d on "
                            "stopping); back to pending, no kill counted", path, cfg.grace_seconds)
            return RELEASED
        if rc == -signal.SIGKILL:
            if oom_seen or file_queue.count_kill(q, path) >= 2:
                return SPLIT
            file_queue.release(q, path)
            log.warning("%s: its process was killed (SIGKILL); requeued (a second kill splits it)", path)
            return REQUEUED
        if rc == EXIT_MEMORY:
            return SPLIT
        reason = f"its process ended with {describe(rc)} without recording an outcome"
        _failed(q, c, path, reason)
    log.error("failed %s: %s", path, reason)
    return FAILED


def describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"
