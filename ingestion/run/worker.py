"""The queue worker: each file in a process of its own, so memory is given back after each.

Before work: checks everything that can be known before paying (preflight.check_ready: the
key and the model asked of the API, the store opened and checked), builds the queue if
there is none (or rebuilds it when it describes another collection), returns stale
`processing` entries (owner gone, or lease expired) to pending, writes the vectors an
earlier run paid for but could not store (paid_vectors.py), and finishes split files whose
parts are all stored. Then, MAX_ITERATIONS files (0: until the queue is empty),
children claim a file, ingest it and record its outcome (FILES_PER_CHILD files, then the
child exits); FILE_CONCURRENCY children run side by side.

Children are forked from a fork server that has already imported openai, tiktoken and
the pipeline, so a child costs a fork, not an interpreter start. The worker opens the
store once and lends it to its children (lent_store): none of them opens Chroma, the
embedded store's index is loaded once, and its one-writer lock is held by the worker for
the run. Where the platform cannot fork, each child is a fresh `ingest_one_file.py`
subprocess that opens the store itself, one at a time.

When a child dies without recording an outcome (outcomes.after_death):
- killed by SIGKILL: the kernel's OOM killer is the usual cause. With cgroup
  evidence (memory.events oom_kill went up) or on the file's second kill, it is
  split and its parts are queued; a first kill without evidence just requeues it
  (a kill -9 by hand should not change how a file is chunked);
- while the worker is stopping (SIGTERM: it forwards it, and kills a child still busy after
  GRACE_SECONDS): the file goes back to pending; a death the worker caused counts for nothing;
- any other death: the file fails with the exit status as its reason.

When the fork server dies (killed: by the OOM killer, or by hand), CPython reports 255 for every
child it started, though those children live on. The worker tells that from a child's own exit
status by looking at the server: it says so in one line, keeps serving and reading the children
already running until they end (they finish their files, and their outcomes are counted), returns
the file of one that dies to pending (its exit status cannot be known), and starts a new server
for the next files. Lost again before a file was done, the run stops with exit 9.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field

from ingestion.common import procinfo, progress
from ingestion.common.errors import (EXIT_API_DOWN, EXIT_AUTH, EXIT_BUSY, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK,
                                     EXIT_SERVER_LOST, IngestionError, outcome_name)
from ingestion.common.settings import Config
from ingestion.run import job, preflight, splits
from ingestion.run.children import ForkLauncher, SubprocessLauncher
from ingestion.storage import paid_vectors
from ingestion.tracking import checkpoint, file_queue, outcomes, scan, state

log = logging.getLogger("ingestion")


@dataclass
class Tally:
    runs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.runs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def capacity_warning(cfg: Config, vectors: int) -> str | None:
    """In embedded mode the process that opens the store (the worker) loads its whole index: warn near the limit."""
    from ingestion.openai_api import models
    from ingestion.run import capacity

    budget, _ = capacity.budget()
    dims = models.dimensions(cfg.embedding_model, cfg.embedding_dimensions)
    if cfg.remote_store or not budget or not dims:
        return None
    children = cfg.file_concurrency if cfg.files_per_child == 1 else 1
    need = capacity.run_bytes(vectors, dims, children)
    if need < capacity.WARN_AT * budget:
        return None
    fits = capacity.most_vectors(budget, dims, children)
    return (f"the embedded store holds about {vectors:,} vectors of {dims} dimensions (~{need / 2**30:.1f} GB for the "
            f"worker holding its index, and its children); this machine has {budget / 2**30:.1f} GB, room for about "
            f"{fits:,}. Use a Chroma server (CHROMA_HOST), fewer EMBEDDING_DIMENSIONS, or more memory")


def prepare(cfg: Config) -> int:
    """Queue for this collection; stale leases back to pending; the capacity plan (an embedded store that
    would outgrow this machine is refused before anything is claimed); finished split files completed.
    Returns the number of pending files."""
    from ingestion.common.errors import ConfigError
    from ingestion.run import capacity

    refuse = capacity.refuses()  # (CAPACITY_CHECK checked before anything is changed)
    scan.ensure_queue(cfg)
    with state.transaction(cfg) as (q, c):
        file_queue.normalise(q, cfg.allowed_roots)
        stale = file_queue.release_stale(q, cfg.lease_seconds)
        ready = file_queue.split_waiting(q)
        vectors = sum(d.get("chunks") or 0 for d in checkpoint.done_files(c).values())
        counts = file_queue.counts(q)
        pending = counts[file_queue.PENDING]
    for path in stale:
        log.warning("returned %s to pending: its process is gone or its lease expired", path)
    plan = None
    if not cfg.remote_store and (pending or counts[file_queue.PROCESSING]):
        plan = capacity.plan(cfg, q, c, capacity.stored_vectors(cfg, c))
    if plan is not None and not (plan.fits_memory() and plan.fits_disk()):
        if refuse:
            raise ConfigError(plan.refusal())
        log.warning("%s (CAPACITY_CHECK=warn: going on)", plan.refusal())
    else:
        warning = plan.warning() if plan is not None else capacity_warning(cfg, vectors)
        if warning:
            log.warning("%s", warning)
    if ready or paid_vectors.waiting(cfg):
        from ingestion.storage.store import Store

        with Store(cfg) as store:
            # before any file is claimed: its re-run finds them stored
            paid_vectors.restore(cfg, store, file_queue.completed_in(cfg.queue_path))
            for original in ready:
                splits.finalize_split(cfg, original, store)
    return pending


def run(cfg: Config, max_iterations: int, stop: job.StopFlag) -> int:
    from ingestion.storage.store import check_store

    preflight.check_ready(cfg, store=None, api=False)
    fork = "forkserver" in multiprocessing.get_all_start_methods()
    waiting = _work_waiting(cfg)
    if waiting and cfg.grace_seconds <= cfg.openai_timeout:
        log.warning("GRACE_SECONDS=%d is not longer than OPENAI_TIMEOUT=%g: a stop (deploy, restart) during a slow "
                    "embeddings request kills the file's process before it can release the file (it goes back to "
                    "pending all the same, and that request is paid again); set GRACE_SECONDS above "
                    "OPENAI_TIMEOUT and below the platform's shutdown delay", cfg.grace_seconds, cfg.openai_timeout)
    launcher = ForkLauncher(cfg, start=waiting) if fork else SubprocessLauncher()
    check_store(cfg, wait=False)  # embedded: held by another worker for its whole run, so not worth waiting
    if waiting:  # (nothing pending: nothing will be paid, so the API is not asked)
        launcher.check_embedding(cfg)
    pending = prepare(cfg)
    todo = min(pending, max_iterations or pending)
    # FILE_CONCURRENCY files at once: side by side children (sharing the worker's store) when each
    # takes one file; within one child otherwise (job.work)
    lanes = cfg.file_concurrency if cfg.files_per_child == 1 and launcher.shares_store else 1
    lanes = min(lanes, todo)  # none when nothing is pending
    r = _Run(cfg, max_iterations, stop)
    with progress.bar(todo, "files", "files") as advance, launcher:
        r.advance = advance
        threads = [threading.Thread(target=_lane, args=(r, launcher), name=f"lane-{n}") for n in range(lanes)]
        for t in threads:
            t.start()
        job.join_all(threads)
    code = EXIT_INTERRUPTED if stop() else r.code
    with state.transaction(cfg) as (q, _):  # (and the checkpoint's journal folded into checkpoint.json)
        counts = file_queue.counts(q)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(r.tally.outcomes.items())) or "none"
    print(f"worker: {r.tally.runs} files run ({summary}); queue: pending {counts['pending']}, "
          f"processing {counts['processing']}, completed {counts['completed']}, failed {counts['failed']}")
    if code in (EXIT_AUTH, EXIT_CONFIG, EXIT_SERVER_LOST) and r.stopped_by:
        raise RunStopped(r.stopped_by, code)
    return code


def _work_waiting(cfg: Config) -> bool:
    """A first look: will this run have files to ingest (no queue yet, or files pending or in processing)?"""
    if not cfg.queue_path.exists():
        return True
    counts = file_queue.counts(file_queue.load(cfg.queue_path)[0])
    return bool(counts[file_queue.PENDING] or counts[file_queue.PROCESSING])


@dataclass
class _Run:
    """What the worker's lanes share: the tally, the files given out, and why the run ends."""
    cfg: Config
    max_iterations: int
    stop: job.StopFlag
    tally: Tally = field(default_factory=Tally)
    held: set[str] = field(default_factory=set)  # files another worker holds: not again in this run
    code: int = EXIT_OK
    halted: bool = False
    api_down: int = 0
    stopped_by: str = ""  # the message of a problem of the run that stopped a child
    given: int = 0        # files run, plus what running children may still take
    running: int = 0      # children alive now
    advance: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def budget(self) -> int:
        """Files the next child may take (0: this lane is done)."""
        with self.lock:
            if self.halted or self.stop():
                return 0
            n = self.cfg.files_per_child if self.max_iterations == 0 else \
                max(0, min(self.cfg.files_per_child, self.max_iterations - self.given))
            self.given += n
            return n

    def halt(self, code: int) -> None:
        self.code = self.code or code
        self.halted = True


def _lane(r: _Run, launcher) -> None:
    """Children one after another, until the queue is empty or the run ends."""
    while budget := r.budget():
        oom_before = procinfo.oom_kills() or 0
        with r.lock:
            held = set(r.held)
            r.running += 1
        try:
            rc, pid, done = launcher.run(os.getpid(), budget, held, r.stop, r.cfg.grace_seconds)
        except IngestionError as e:  # the worker's store cannot be opened, or no fork server: nothing was claimed
            with r.lock:
                r.running -= 1
                r.stopped_by = str(e)
                r.halt(e.exit_code)
            return
        with r.lock:
            r.running -= 1
            before = r.tally.runs
            r.stopped_by = _count(r.cfg, r.tally, rc, pid, done, r.held, r.stop, oom_before) or r.stopped_by
            ran = r.tally.runs - before
            r.given += ran - budget
            r.advance(ran)
            if rc is None:
                continue  # its fork server died: what it held is counted; the next child gets a new server
            if rc in (EXIT_AUTH, EXIT_CONFIG) or (rc != EXIT_OK and ran == 0):
                r.halt(rc)  # a problem of the run, or a child that cannot start: stop here
                return
            if rc == EXIT_OK and not done:
                return  # nothing left to claim
            r.api_down = r.api_down + 1 if rc == EXIT_API_DOWN else 0
            if r.api_down >= 2 and not r.halted:
                log.error("the embeddings API failed for two files in a row; stopping this run (files requeued)")
                r.halt(EXIT_API_DOWN)
                return
        # the API failed this file: no new child here while others are still finding out whether
        # it is down (each would spend an attempt of a file); alone, try one more file
        while rc == EXIT_API_DOWN and r.api_down and r.running and not (r.halted or r.stop()):
            time.sleep(0.1)


class RunStopped(IngestionError):
    """A child stopped for a problem of the run: the worker ends with its message and code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def _count(cfg: Config, tally: Tally, rc: int | None, pid: int, done: list, held: set[str], stop: job.StopFlag,
           oom_before: int) -> str:
    """Tally what a child did: the outcomes it reported, and the files it held when it died or stopped
    (rc None: its exit status is not known, its fork server died). Returns the message of a problem of
    the run that stopped it, if any."""
    stopped_by = ""
    for file_rc, file_path, why in done:
        tally.add(outcome_name(file_rc))
        if file_rc == EXIT_BUSY:
            held.add(file_path)
        stopped_by = why or stopped_by
    if rc != EXIT_OK:
        with state.transaction(cfg, checkpoint=False) as (q, _):
            stuck = file_queue.held_by(q, pid)
        for path in stuck:
            tally.add(_after_death(cfg, path, rc, stop, oom_seen=(procinfo.oom_kills() or 0) > oom_before))
    return stopped_by


def _after_death(cfg: Config, path: str, rc: int | None, stop: job.StopFlag, oom_seen: bool) -> str:
    outcome = outcomes.after_death(cfg, path, rc, oom_seen, stopping=stop())
    if outcome != outcomes.SPLIT:
        return outcome
    try:
        split = splits.split_after_oom(cfg, path, f"process {outcomes.describe(rc)}")
    except IngestionError as e:
        log.error("%s", e)
        return outcomes.RELEASED
    return outcomes.SPLIT if split else outcomes.FAILED
