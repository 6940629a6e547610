"""One queued file from claim to outcome: the work behind ingest_one_file.py.

Every way out leaves the file in exactly one list with a reason:
  stored          -> completed (+ checkpoint)
  bad input / 400 -> failed with the reason
  API down        -> back to pending (failed after MAX_ATTEMPTS)
  key refused     -> back to pending, and the run stops
  out of memory   -> split; its parts go first in pending
  SIGTERM         -> back to pending (what was stored stays: resuming is free)
  a bug           -> failed with the error, traceback in the log
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ingestion import checkpoint, chunking, file_queue, splitter, state, textfile
from ingestion.embeddings import Embedder
from ingestion.errors import (EXIT_BUG, EXIT_FILE_FAILED, EXIT_OK, ApiRejected, ApiUnavailable, ConfigError,
                              FileRejected, HeldElsewhere, IngestionError, OutOfMemory, StateFileError)
from ingestion.ingest import Result, ingest, peak_rss_mb, rss_mb, sha256_text
from ingestion.settings import Config
from ingestion.store import Store, chunk_id, source_key

log = logging.getLogger("ingestion")
LEASE_RENEW_SECONDS = 60


class StopFlag:
    """Set by SIGTERM/SIGINT; work stops at the next batch boundary."""

    def __init__(self):
        self.signal: int | None = None

    def install(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def check_ready(cfg: Config, need_key: bool = True) -> None:
    """Fail fast, before touching the queue, when the run cannot work."""
    if not cfg.transcripts_dir.is_dir():
        raise ConfigError(f"TRANSCRIPTS_DIR {cfg.transcripts_dir} is not a folder: set TRANSCRIPTS_DIR "
                          "to the folder holding the transcripts")
    if need_key:
        from ingestion.embeddings import openai_api_key
        openai_api_key()
    from ingestion.chunking import encoding
    encoding()  # the tokenizer file must be there before a file is claimed


def allowed_roots(cfg: Config) -> list[Path]:
    return [cfg.transcripts_dir, cfg.splits_dir]


def ingest_several(cfg: Config, first: str, more: int, stop: StopFlag) -> int:
    """The worker's child with FILES_PER_CHILD > 1: the claimed file, then up to `more` others it
    claims itself, FILE_CONCURRENCY at a time, in one process with one open store, until the
    queue is empty, an error that concerns every file, a signal, or its RSS passes
    CHILD_MAX_RSS_MB (then a fresh child goes on). Several files at once hide each file's
    round trips to the API behind the others' work. Prints one `@@done CODE PATH` line per
    file for the worker's tally; returns the first code that ended it, else 0."""
    from ingestion.scan import shard_filter
    from ingestion.settings import raw

    check_ready(cfg)
    embedder = Embedder(cfg)
    accept = shard_filter(raw("WORKER_SHARD"), cfg.transcripts_dir)
    lock = threading.Lock()
    budget = [more]
    ending = [EXIT_OK]
    first_file = [first]

    def next_file() -> str | None:
        with lock:
            if first_file[0]:
                path, first_file[0] = first_file[0], None
                return path
            if ending[0] != EXIT_OK or stop() or budget[0] <= 0 or rss_mb() > cfg.child_max_rss_mb:
                return None
            budget[0] -= 1
        with state.transaction(cfg) as (q, _):
            path = file_queue.claim(q, accept=accept)
            if path is not None:
                file_queue.info(q, path)["lease"]["child_pid"] = os.getpid()
        return path

    def work() -> None:
        while (path := next_file()) is not None:
            code = ingest_one(cfg, path, claimed=True, stop=stop, embedder=embedder, store=store)
            print(f"@@done {code} {path}", flush=True)
            if code not in (EXIT_OK, EXIT_FILE_FAILED):
                with lock:
                    ending[0] = ending[0] or code

    with Store(cfg) as store:
        threads = [threading.Thread(target=work) for _ in range(min(cfg.file_concurrency, more + 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return ending[0]


def ingest_one(cfg: Config, path: str | None = None, claimed: bool = False, stop: StopFlag | None = None,
               embedder: Embedder | None = None, store: Store | None = None) -> int:
    """Claim (unless the worker already did), ingest and record one file; returns an exit code."""
    stop = stop or StopFlag()
    if embedder is None:
        check_ready(cfg)
        embedder = Embedder(cfg)
    if path is not None and not os.path.isabs(path):
        path = os.path.abspath(path)  # queue entries are absolute; keep them exactly as written
    with state.transaction(cfg) as (q, _):
        if claimed:
            lease = file_queue.info(q, path).get("lease")
            if file_queue.where(q, path) != "processing" or not lease:
                raise StateFileError(f"{path} is not claimed in the queue; run without --claimed")
            lease["child_pid"] = os.getpid()
        else:
            if path is not None and not textfile.is_allowed(Path(path), allowed_roots(cfg)):
                raise ConfigError(f"{path} is outside TRANSCRIPTS_DIR ({cfg.transcripts_dir}); not ingesting it")
            path = file_queue.claim(q, path)
        if path is None:
            print("queue is empty: nothing to do")
            return EXIT_OK
        original = file_queue.original_of(q, path)
        original_sha = q["files"].get(original, {}).get("sha256") if original != path else None
    part = "" if original == path else Path(path).stem
    started = time.monotonic()
    try:
        if store is None:
            with Store(cfg) as own_store:
                result, file_sha = _ingest(cfg, own_store, embedder, path, original, original_sha, part, stop)
        else:
            result, file_sha = _ingest(cfg, store, embedder, path, original, original_sha, part, stop)
    except (FileRejected, ApiRejected) as e:
        return _fail(cfg, path, original, str(e))
    except textfile.FileChanged:
        with state.transaction(cfg) as (q, _):
            requeued = file_queue.retry_later(q, path, "the file changed while it was read", cfg.max_attempts)
        log.warning("%s changed while it was read: %s", path, "requeued" if requeued else "failed")
        return EXIT_OK if requeued else EXIT_FILE_FAILED
    except ApiUnavailable as e:
        with state.transaction(cfg) as (q, c):
            requeued = file_queue.retry_later(q, path, str(e), cfg.max_attempts)
            if not requeued:
                checkpoint.record_failed(c, original, str(e), file_queue.info(q, path).get("attempts", 0))
        log.error("%s: %s; %s", path, e, "back to pending" if requeued else "failed")
        return e.exit_code
    except OutOfMemory as e:
        split_after_oom(cfg, path, str(e))
        return e.exit_code
    except HeldElsewhere as e:
        with state.transaction(cfg) as (q, _):
            file_queue.info(q, path).pop("lease", None)
            file_queue.move(q, path, "pending")
        log.warning("%s; left in pending", e)
        return e.exit_code
    except (IngestionError, KeyboardInterrupt):
        # key refused, bad config, interrupted: the file is fine, give it back untouched
        with state.transaction(cfg) as (q, _):
            if file_queue.where(q, path) == "processing":
                file_queue.release(q, path)
        raise
    except Exception as e:
        log.exception("unexpected error while ingesting %s", path)
        _fail(cfg, path, original, f"internal error: {type(e).__name__}: {e}")
        return EXIT_BUG
    seconds = time.monotonic() - started
    if _record_success(cfg, path, original, part, file_sha, result, seconds):
        finalize_split(cfg, original, store)
    return EXIT_OK


def _ingest(cfg, store, embedder, path, original, original_sha, part, stop) -> tuple[Result, str]:
    if not textfile.is_allowed(Path(path), allowed_roots(cfg)):
        raise FileRejected("outside TRANSCRIPTS_DIR and the splits folder (symlink or edited queue); not read")
    info = textfile.inspect(Path(path))
    file_sha = original_sha or info.sha256
    last_renew = [time.monotonic()]
    owner = f"{socket.gethostname()}:{os.getpid()}"

    def renew(_result: Result) -> None:
        if time.monotonic() - last_renew[0] > LEASE_RENEW_SECONDS:
            last_renew[0] = time.monotonic()
            store.renew(original, owner, cfg.lease_seconds)
            with state.transaction(cfg) as (q, _):
                lease = file_queue.info(q, path).get("lease")
                if lease:
                    lease["renewed"] = time.time()

    other = store.claim(original, owner, cfg.lease_seconds)
    if other:
        raise HeldElsewhere(f"{original} is being ingested by {other} (shared store lease)")
    try:
        result = ingest(cfg, store, embedder.embed, Path(path), original, file_sha, info, part=part,
                        should_stop=stop, after_batch=renew)
    finally:
        store.unclaim(original, owner)
    if result.chunks == 0:
        raise FileRejected("empty: no text to embed (" + ("whitespace only)" if info.size else "0 bytes)"))
    return result, file_sha


def _fail(cfg: Config, path: str, original: str, reason: str) -> int:
    with state.transaction(cfg) as (q, c):
        file_queue.fail(q, path, reason)
        attempts = file_queue.info(q, path).get("attempts", 1)
        checkpoint.record_failed(c, original, reason if path == original else f"part {path}: {reason}", attempts)
    log.error("failed %s: %s", path, reason)
    return EXIT_FILE_FAILED


def _record_success(cfg, path, original, part, file_sha, result: Result, seconds: float) -> bool:
    """Record a stored file; True when it was the last part of a split file still to finish."""
    st = os.stat(path)
    with state.transaction(cfg) as (q, c):
        file_queue.complete(q, path)
        entry = file_queue.info(q, path)
        entry.update(size=st.st_size, mtime=st.st_mtime, sha256=file_sha if not part else entry.get("sha256"),
                     chunks=result.chunks, tokens=result.tokens, attempts=0)
        entry.pop("last_error", None)
        if not part:
            checkpoint.record_done(c, path, file_sha256=file_sha, size=st.st_size, mtime=st.st_mtime,
                                   chunks=result.chunks, tokens=result.tokens,
                                   embedded_tokens=result.embedded_tokens, seconds=round(seconds, 2))
        parts_done = part and all(file_queue.where(q, p) == "completed"
                                  for p in file_queue.info(q, original).get("parts", []))
    log.info("completed %s: %d chunks, %d tokens, %d embedded (%d requests, %d reused, %d stale removed), "
             "%.1fs, peak RSS %.0f MB", path, result.chunks, result.tokens, result.embedded_tokens,
             result.requests, result.reused, result.removed, seconds, peak_rss_mb(),
             extra={"fields": {"event": "file_done", "file": path, "chunks": result.chunks,
                               "tokens": result.tokens, "embedded_tokens": result.embedded_tokens,
                               "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb())}})
    return bool(parts_done)


def finalize_split(cfg: Config, original: str, store: Store | None = None) -> None:
    """All parts of a split file are stored: drop the original's stale chunks, mark it done.

    store: the caller's open store (a process must not open the embedded store twice)."""
    with state.transaction(cfg) as (q, _):
        entry = file_queue.info(q, original)
        parts = list(entry.get("parts", []))
        file_sha = entry.get("sha256")
        if not parts or not all(file_queue.where(q, p) == "completed" for p in parts):
            return
    keep: set[str] = set()
    chunks = tokens = 0
    for p in parts:  # the ids the parts produced: cut them again (no API call)
        info = textfile.inspect(Path(p))
        for c in chunking.iter_chunks(textfile.iter_text(Path(p), info), cfg.chunk_max_tokens,
                                      cfg.chunk_overlap_tokens):
            keep.add(chunk_id(original, sha256_text(c.text)))
            chunks += 1
            tokens += c.token_count
    with (contextlib.nullcontext(store) if store is not None else Store(cfg)) as s:
        removed = s.remove_stale(original, keep)
        s.mark_done(original, file_sha, chunks, tokens)
    st = os.stat(original) if os.path.exists(original) else None
    with state.transaction(cfg) as (q, c):
        for p in parts:
            file_queue.move(q, p, None)
            q["files"].pop(p, None)
        entry = file_queue.info(q, original)
        entry.pop("parts", None)
        entry.update(chunks=chunks, tokens=tokens, split=len(parts))
        file_queue.complete(q, original)
        checkpoint.record_done(c, original, file_sha256=file_sha, size=st.st_size if st else None,
                               mtime=st.st_mtime if st else None, chunks=chunks, tokens=tokens,
                               split_into=len(parts))
    for p in parts:
        try:
            os.unlink(p)
        except OSError:
            pass
    log.info("completed %s from %d parts: %d chunks, %d stale removed", original, len(parts), chunks, removed)


def split_after_oom(cfg: Config, path: str, reason: str) -> bool:
    """Split a file that ran out of memory and queue its parts; fail it at the floor.

    Returns True when parts were queued."""
    with state.transaction(cfg) as (q, _):
        original = file_queue.original_of(q, path)
        original_sha = q["files"].get(original, {}).get("sha256")
    try:
        size = os.path.getsize(path)
        if size <= cfg.split_min_bytes:
            raise FileRejected(f"out of memory ({reason}) even as a part of {size} bytes "
                               f"(SPLIT_MIN_BYTES={cfg.split_min_bytes}); raise MEMORY_LIMIT_MB or use "
                               "a bigger machine")
        if original == path:
            original_sha = textfile.inspect(Path(path)).sha256
        out_dir = cfg.splits_dir / source_key(original)
        parts = splitter.split_file(Path(path), out_dir, parts=cfg.split_parts)
    except FileRejected as e:
        _fail(cfg, path, original, str(e))
        return False
    except StateFileError as e:  # disk full while writing parts: leave the file to retry
        with state.transaction(cfg) as (q, _):
            file_queue.retry_later(q, path, str(e), cfg.max_attempts)
        log.error("%s", e)
        return False
    if len(parts) < 2:
        _fail(cfg, path, original, f"out of memory ({reason}) and it cannot be split further")
        return False
    with state.transaction(cfg) as (q, _):
        file_queue.info(q, original)["sha256"] = original_sha
        file_queue.replace_with_parts(q, path, [str(p) for p in parts], original)
    if path != original and path.startswith(str(cfg.splits_dir)):
        try:
            os.unlink(path)
        except OSError:
            pass
    log.warning("out of memory on %s (%s): split into %d parts, queued first", path, reason, len(parts))
    return True
