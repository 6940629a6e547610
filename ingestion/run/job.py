"""One file from claim to outcome: claim it in the queue, ingest it (pipeline), record its fate (outcomes).

`work` is what a worker's child runs: claim a file, ingest it, record it, as many
times as it is allowed, reporting each file's exit code to the worker.
`ingest_path` is ingest_one_file.py on its own.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ingestion.common.errors import (EXIT_API_DOWN, EXIT_BUG, EXIT_BUSY, EXIT_FILE_FAILED, EXIT_MEMORY, EXIT_OK,
                                     ApiRejected, ApiUnavailable, ConfigError, FileRejected, HeldElsewhere,
                                     IngestionError, OutOfMemory)
from ingestion.common.procinfo import peak_rss_mb, rss_mb
from ingestion.common.settings import Config
from ingestion.run.embed_and_store import Result, ingest
from ingestion.run.preflight import check_ready
from ingestion.run.splits import finalize_split, split_after_oom
from ingestion.storage import paid_vectors
from ingestion.storage.store import Store
from ingestion.text import textfile
from ingestion.tracking import file_queue, outcomes, paths, scan, state

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


def join_all(threads: list[threading.Thread]) -> None:
    """Wait for threads in short slices. The kernel hands a process's SIGTERM to any of its threads, and
    Python runs the handler only in the main thread, once that thread is back in the interpreter: a main
    thread in a bare join() left a deploy's SIGTERM unseen until the threads ended (a whole slow request,
    with GRACE_SECONDS never counted)."""
    for t in threads:
        while t.is_alive():
            t.join(0.1)


def work(cfg: Config, owner_pid: int, budget: int, held: set[str], stop: StopFlag,
         report: Callable[[int, str, str], None], link=None) -> int:
    """Claim and ingest up to `budget` files (FILE_CONCURRENCY at a time when there are several) in this
    process, until the queue is empty, a problem of the run, a signal, or RSS passes CHILD_MAX_RSS_MB.
    link: the worker's store (store_link.StoreLink); without it this process opens the store.
    report(code, path, why) is called for each file (why: the message of a problem of the run that
    released it); returns the code that ended the work (0: none)."""
    from ingestion.openai_api.embeddings import Embedder  # not imported by the worker itself: it never embeds

    embedder = Embedder(cfg)
    in_shard = paths.shard_filter(cfg)
    accept = lambda p: in_shard(p) and p not in held  # noqa: E731
    lock = threading.Lock()
    left = [budget]
    ending = [EXIT_OK]

    def next_file() -> Claimed | None:
        with lock:
            if ending[0] != EXIT_OK or stop() or left[0] <= 0 or (left[0] < budget and
                                                                    rss_mb() > cfg.child_max_rss_mb):
                return None
            left[0] -= 1
        with state.transaction(cfg, checkpoint=False) as (q, _):
            path = file_queue.claim(q, accept=accept, owner_pid=owner_pid, child_pid=os.getpid())
            return None if path is None else Claimed.of(q, path)

    def loop() -> None:
        while (claimed := next_file()) is not None:
            why, path = "", claimed.path
            try:
                code = ingest_claimed(cfg, claimed, store, embedder, stop)
            except IngestionError as e:  # a problem of the run: the file was released
                code, why = e.exit_code, str(e)
            report(code, path, why)
            if code not in (EXIT_OK, EXIT_FILE_FAILED, EXIT_BUSY, EXIT_MEMORY, EXIT_API_DOWN, EXIT_BUG):
                with lock:
                    ending[0] = ending[0] or code
            elif code in (EXIT_MEMORY, EXIT_API_DOWN):
                with lock:  # this child's memory, or the API: let the worker decide what comes next
                    ending[0] = ending[0] or code

    with link or Store(cfg) as store:
        threads = [threading.Thread(target=loop) for _ in range(max(1, min(cfg.file_concurrency, budget)))]
        for t in threads:
            t.start()
        join_all(threads)
    return ending[0]


# ---- ingest_one_file.py alone ----------------------------------------------------------------
def ingest_path(cfg: Config, path: str | None, stop: StopFlag) -> int:
    """Claim PATH (or the first pending file) for this process, ingest it, record its fate."""
    from ingestion.openai_api.embeddings import Embedder

    check_ready(cfg)
    embedder = Embedder(cfg)
    scan.ensure_queue(cfg)
    if path is not None:
        path = paths.canonical(path, cfg.allowed_roots)
        if not textfile.is_allowed(Path(path), cfg.allowed_roots):
            raise ConfigError(f"{path} is outside TRANSCRIPTS_DIR ({cfg.transcripts_dir}); not ingesting it")
    with state.transaction(cfg, checkpoint=False) as (q, _):
        file_queue.normalise(q, cfg.allowed_roots)
        if path is not None and file_queue.where(q, path) == file_queue.PROCESSING:
            raise HeldElsewhere(f"{path} is being processed right now (lease: {file_queue.lease(q, path)})")
        path = file_queue.claim(q, path)
        claimed = None if path is None else Claimed.of(q, path)
    if claimed is None:
        print("queue is empty: nothing to do")
        return EXIT_OK
    ingesting = False
    try:
        with Store(cfg) as store:
            paid_vectors.restore(cfg, store, file_queue.completed_in(cfg.queue_path))
            ingesting = True  # (from here ingest_claimed records the file's fate itself)
            return ingest_claimed(cfg, claimed, store, embedder, stop)
    except BaseException:
        if not ingesting:  # the store failed to open (checked a moment ago): the claim goes back
            outcomes.release(cfg, claimed.path)
        raise
    finally:
        with state.transaction(cfg):  # the checkpoint's journal folded into checkpoint.json
            pass


# ---- one claimed file --------------------------------------------------------------------------
@dataclass(frozen=True)
class Claimed:
    """A file this process claimed, and what the claim's transaction knew of it."""
    path: str
    original: str             # the transcript it is a part of (itself when not a split part)
    original_sha: str | None  # a part's original's content hash

    @classmethod
    def of(cls, q: dict, path: str) -> "Claimed":
        original = file_queue.original_of(q, path)
        return cls(path, original, file_queue.details(q, original).get("sha256") if original != path else None)


def ingest_claimed(cfg: Config, claimed: Claimed, store: Store, embedder, stop: StopFlag) -> int:
    """Ingest a file this process claimed and record its outcome; returns its exit code.

    A problem of the run (store, key, settings, state files, a signal) releases the file
    and is raised; only a problem of the file fails it."""
    path, original, original_sha = claimed.path, claimed.original, claimed.original_sha
    started = time.monotonic()
    try:
        result, file_sha = _ingest(cfg, store, embedder, path, original, original_sha, stop)
    except (FileRejected, ApiRejected) as e:
        outcomes.fail(cfg, path, str(e))
        return EXIT_FILE_FAILED
    except textfile.FileChanged:
        return EXIT_OK if outcomes.retry(cfg, path, "the file changed while it was read") else EXIT_FILE_FAILED
    except ApiUnavailable as e:
        outcomes.retry(cfg, path, str(e))
        return e.exit_code
    except OutOfMemory as e:
        split_after_oom(cfg, path, str(e))
        return e.exit_code
    except HeldElsewhere as e:
        outcomes.defer(cfg, path)
        log.warning("%s; left in pending", e)
        return e.exit_code
    except (IngestionError, KeyboardInterrupt):
        outcomes.release(cfg, path)
        raise
    except Exception as e:
        log.exception("unexpected error while ingesting %s (a bug; please report it)", path)
        outcomes.retry(cfg, path, f"internal error: {type(e).__name__}: {e}")
        return EXIT_BUG
    seconds = time.monotonic() - started
    st = os.stat(path)
    done = {"chunks": result.chunks, "tokens": result.tokens, "embedded_tokens": result.embedded_tokens,
            "seconds": round(seconds, 2)}
    last_part = outcomes.complete(cfg, path, original, file_sha, st.st_size, st.st_mtime, done)
    _log_done(path, result, seconds)
    if last_part:
        finalize_split(cfg, original, store)
    return EXIT_OK


def _ingest(cfg, store, embedder, path, original, original_sha, stop) -> tuple[Result, str]:
    if not textfile.is_allowed(Path(path), cfg.allowed_roots):
        raise FileRejected("outside TRANSCRIPTS_DIR and the splits folder (symlink or edited queue); not read")
    info = textfile.inspect(Path(path))
    file_sha = original_sha or info.sha256
    part = "" if original == path else Path(path).stem
    last_renew = [time.monotonic()]
    owner = f"{socket.gethostname()}:{os.getpid()}"

    def renew(_result: Result) -> None:
        if time.monotonic() - last_renew[0] > LEASE_RENEW_SECONDS:
            last_renew[0] = time.monotonic()
            store.renew(original, owner, cfg.lease_seconds)
            with state.transaction(cfg, checkpoint=False) as (q, _):
                file_queue.renew(q, path)

    other = store.claim(original, owner, cfg.lease_seconds)
    if other:
        raise HeldElsewhere(f"{original} is being ingested by {other} (shared store lease)")
    try:
        result = ingest(cfg, store, embedder.embed, Path(path), original, file_sha, info, part=part,
                        should_stop=stop, after_batch=renew)
    finally:
        try:
            store.unclaim(original, owner)
        except IngestionError:
            pass
    if result.chunks == 0:
        raise FileRejected("empty: no text to embed (" + ("whitespace only)" if info.size else "0 bytes)"))
    return result, file_sha


def _log_done(path: str, result: Result, seconds: float) -> None:
    cleaned = ""
    if result.cleanup.cleaned:
        cleaned = (f", cleanup: {result.cleanup.removed_lines} layout lines and "
                   f"{result.cleanup.index_dropped_chars} characters of word index dropped")
    log.info("completed %s: %d chunks, %d tokens, %d embedded (%d requests, %d reused, %d stale removed)%s, "
             "%.1fs, peak RSS %.0f MB", path, result.chunks, result.tokens, result.embedded_tokens,
             result.requests, result.reused, result.removed, cleaned, seconds, peak_rss_mb(),
             extra={"fields": {"event": "file_done", "file": path, "chunks": result.chunks,
                               "tokens": result.tokens, "embedded_tokens": result.embedded_tokens,
                               "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb()),
                               "index_dropped_chars": result.cleanup.index_dropped_chars}})
