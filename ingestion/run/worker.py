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

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ingestion.common import procinfo, progress
from ingestion.common.errors import (EXIT_API_DOWN, EXIT_AUTH, EXIT_BUG, EXIT_BUSY, EXIT_CONFIG, EXIT_INTERRUPTED,
                                     EXIT_OK, EXIT_SERVER_LOST, ForkServerLost, IngestionError, outcome_name)
from ingestion.common.settings import Config
from ingestion.run import job, preflight, splits
from ingestion.storage import paid_vectors
from ingestion.tracking import checkpoint, file_queue, outcomes, scan, state

log = logging.getLogger("ingestion")
INGEST_SCRIPT = Path(__file__).resolve().parents[1] / "ingest_one_file.py"


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
        for t in threads:
            t.join()
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


# ---- starting children ---------------------------------------------------------------------------
def child_main(owner_pid: int, budget: int, held: list[str], report, link=None) -> int:
    """What a child runs: its own session (a terminal's Ctrl-C goes to the worker, which forwards it),
    then job.work. report(code, path, why) tells the worker each file's outcome; link: the worker's store."""
    from ingestion.common import cli, settings

    if os.getsid(0) != os.getpid():  # (a SubprocessLauncher child is started in a session of its own)
        os.setsid()
    cli.setup_logging()
    stop = job.StopFlag().install()
    try:
        return job.work(settings.load(), owner_pid, budget, set(held), stop, report, link)
    except IngestionError as e:
        print(f"error: {cli.redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except Exception:
        log.exception("unexpected error in a worker's child (a bug; please report it with this traceback)")
        return EXIT_BUG


def _fork_child(owner_pid: int, budget: int, held: list[str], conn, store_conn) -> None:
    from ingestion.storage.lent_store import StoreLink

    def report(code: int, path: str, why: str) -> None:
        try:
            conn.send((code, path, why))
        except OSError:  # the worker is gone (killed): the queue holds the file's fate anyway
            pass

    code = child_main(owner_pid, budget, held, report, StoreLink(store_conn))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_embedding_child(conn) -> None:
    from ingestion.common import settings

    try:
        preflight.check_embedding(settings.load())
        conn.send(None)
    except IngestionError as e:
        conn.send(e)
    except Exception as e:  # a bug: said in one line by the worker
        conn.send(IngestionError(f"checking the tokenizer and the embeddings API failed: {type(e).__name__}: {e}"))
    conn.close()


def _supervise(pid: int, alive, signal_child, stop: job.StopFlag, grace: float) -> None:
    """Wait for the child; on SIGTERM forward it, and kill the child after the grace period (its file then
    goes back to pending: outcomes.after_death)."""
    forwarded_at = None
    killed = False
    while alive(0.2):
        if stop() and forwarded_at is None:
            signal_child(signal.SIGTERM)
            forwarded_at = time.monotonic()
        elif forwarded_at is not None and time.monotonic() - forwarded_at > grace:
            if not killed:
                log.warning("process %d was still busy %gs after SIGTERM (GRACE_SECONDS): killing it", pid, grace)
                killed = True
            signal_child(signal.SIGKILL)


# Process.start() polls every child this process started, from whichever thread starts one; two threads
# reading one forkserver child's exit status at once make one of them see 255 (CPython's popen_forkserver
# reads a pipe). So children are started, and their exits read, under one lock.
_PROCS = threading.Lock()


def start_child(proc) -> int | None:
    """Start proc from the fork server; returns the pid of the server that forked it."""
    with _PROCS:
        proc.start()
        return fork_server_pid()


def fork_server_pid() -> int | None:
    """The pid of the fork server this process started last (None: none yet). CPython keeps it, unexported,
    in multiprocessing.forkserver; its ensure_running() reaps a dead server and starts a new one."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def child_exit(proc, timeout: float | None) -> int | None:
    """The child's exit code, waiting up to timeout seconds (None: until it exits); None while it runs."""
    from multiprocessing.connection import wait

    if not wait([proc.sentinel], timeout):
        return None
    with _PROCS:
        return proc.exitcode


class ForkLauncher:
    """Children forked from a fork server that preloaded the pipeline (no Chroma client, socket or
    thread exists in the server). The worker opens the store once and lends it to every child
    (lent_store), so children run side by side and none of them opens Chroma.

    A fork server that dies is replaced (CPython's ensure_running starts a new one when a child is
    started); lost again before a child of a newer one reported a file, the run stops (ForkServerLost)."""

    shares_store = True
    LOST_IN_A_ROW = 2  # fork servers lost with no file done in between: the run stops

    def __init__(self, cfg: Config, start: bool = True):
        from multiprocessing import forkserver

        from ingestion.common.settings import PROJECT_ROOT

        self.cfg = cfg
        self.shared = None  # the worker's open store, once the first child needs it (lent_store.Shared)
        self.store_lock = threading.Lock()
        self.lost: set[int] = set()  # pids of fork servers found dead
        self.lost_in_a_row = 0       # of them, lost since a child of a living one last reported a file
        self.servers_lock = threading.Lock()
        # the server is a new interpreter that takes no sys.path from us before preloading: give it ours,
        # and not the working directory, which `python -c` puts first (an `ingestion` folder there, another
        # checkout's, would be what the children run)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        os.environ["PYTHONSAFEPATH"] = "1"
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["ingestion.run.fork_preload"])
        if start:  # now, so that it imports the pipeline while this process checks the store
            forkserver.ensure_running()

    def __enter__(self) -> "ForkLauncher":
        return self

    def __exit__(self, *exc) -> None:
        if self.shared is not None:
            self.shared.store.close()
            self.shared = None

    def check_embedding(self, cfg: Config) -> None:
        """preflight.check_embedding in a child of the fork server (which has the openai client and the tokenizer
        loaded: the worker itself never loads them); its error, if any, is raised here."""
        def make():
            reader, writer = self.ctx.Pipe(duplex=False)
            return self.ctx.Process(target=_check_embedding_child, args=(writer,), daemon=True), [reader, writer]

        while True:
            child, (reader, writer), server = self._start(make)
            writer.close()
            try:
                answered, error = True, reader.recv()
            except EOFError:
                answered, error = False, None
            reader.close()
            code = child_exit(child, None)
            if not answered:
                if code == 255 and self._server_gone(server):
                    continue  # the server died before the check had its answer: asked again of a new one
                error = IngestionError(f"the check of the embeddings API ended without an answer (exit status {code})")
            if error is not None:
                raise error
            return

    def _start(self, make) -> tuple:
        """Start a child: make() returns (the process, its pipes). Returns them and the pid of the fork server
        that forked it. A server found dead, idle or while it starts the child, is said once and replaced;
        lost again before a file was done: ForkServerLost."""
        while True:
            previous = fork_server_pid()
            if previous is not None and not procinfo.pid_alive(previous):
                self._lost_server(previous)  # (died idle, or before the first child)
            with self.servers_lock:
                if self.lost_in_a_row >= self.LOST_IN_A_ROW:
                    raise ForkServerLost(
                        f"the fork server was lost {self.lost_in_a_row} times with no file done in between "
                        f"(pids {', '.join(map(str, sorted(self.lost)))}; killed: out of memory?); the files in "
                        "flight were finished or went back to pending: run again")
            child, pipes = make()
            with _PROCS:  # (start_child's lock: the server's pid read here is the one asked to fork this child)
                previous = fork_server_pid()
                try:
                    child.start()
                    failed = None
                except (OSError, EOFError) as e:  # the server died as it was asked for the child
                    failed = e
                server = fork_server_pid()
            if previous is not None and previous != server:
                self._lost_server(previous)  # (it died a moment before: CPython started another)
            if failed is None:
                return child, pipes, server
            for conn in pipes:  # (a child forked before the server died finds them closed: it releases its file)
                conn.close()
            if server is None:
                raise ForkServerLost(f"cannot start the fork server: {failed}")
            if not self._server_gone(server):
                raise failed

    def _server_gone(self, server: int | None) -> bool:
        """After CPython said 255 (a child's exit status, or the server's pipe closed): True when the fork server
        that forked the child is dead (recorded), False when it lives (255 was the child's own status)."""
        if server is None:
            return False
        deadline = time.monotonic() + 1.0
        while procinfo.pid_alive(server):  # (its pipes close a moment before it is seen dead)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        self._lost_server(server)
        return True

    def _lost_server(self, server: int) -> None:
        """Record that this fork server is dead, and say so once."""
        with self.servers_lock:
            if server in self.lost:
                return
            self.lost.add(server)
            self.lost_in_a_row += 1
            last = self.lost_in_a_row >= self.LOST_IN_A_ROW
        log.error("the fork server (pid %d) is gone (killed: out of memory, or by hand?): the processes it started "
                  "finish their files, the file of one that dies goes back to pending; %s", server,
                  "it was lost again before a file was done, so this run stops" if last else
                  "a new fork server starts the next files")

    def _reported(self, server: int | None) -> None:
        """A child reported a file: a child of a living server did, the fork server is fine again."""
        with self.servers_lock:
            if server not in self.lost:
                self.lost_in_a_row = 0

    def _shared_store(self):
        from ingestion.storage.lent_store import Shared
        from ingestion.storage.store import Store

        with self.store_lock:
            if self.shared is None:
                self.shared = Shared(Store(self.cfg))
            return self.shared

    def run(self, owner_pid: int, budget: int, held: set[str], stop: job.StopFlag, grace: float):
        """One child: (its exit code, None when it cannot be known (its fork server died), its pid, the
        outcomes it reported)."""
        from ingestion.storage import lent_store

        shared = self._shared_store()

        def make():
            reader, writer = self.ctx.Pipe(duplex=False)
            mine, theirs = self.ctx.Pipe(duplex=True)
            child = self.ctx.Process(target=_fork_child, args=(owner_pid, budget, sorted(held), writer, theirs),
                                     daemon=False)
            return child, [reader, writer, mine, theirs]

        child, (reader, writer, mine, theirs), server_pid = self._start(make)
        writer.close()
        theirs.close()
        server = threading.Thread(target=lent_store.serve, args=(shared, mine), daemon=True)
        server.start()
        done: list[tuple[int, str, str]] = []
        ended = [False]
        orphan = [False]  # its fork server died: the child lives on, watched by its pid

        def alive(timeout: float) -> bool:
            if not ended[0]:
                while reader.poll(timeout):
                    try:
                        done.append(reader.recv())
                        self._reported(server_pid)
                    except EOFError:
                        ended[0] = True
                        break
                    timeout = 0
            if orphan[0]:
                if ended[0]:  # (it closed its pipe: it is exiting)
                    time.sleep(0.05)
                return procinfo.pid_alive(child.pid)
            # (the child closed its pipe: wait for its exit)
            code = child_exit(child, timeout if ended[0] else 0)
            if code == 255 and self._server_gone(server_pid):
                orphan[0] = True
                return procinfo.pid_alive(child.pid)
            return code is None

        def signal_child(sig: int) -> None:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

        _supervise(child.pid, alive, signal_child, stop, grace)
        code = None if orphan[0] else child_exit(child, None)
        while not ended[0] and reader.poll(0):
            try:
                done.append(reader.recv())
            except EOFError:
                break
        reader.close()
        server.join(self.cfg.chroma_timeout + 10)  # what the child sent is written before its fate is decided
        mine.close()
        return code, child.pid, done


class SubprocessLauncher:
    """Where the platform cannot fork: each child a fresh `ingest_one_file.py` process that opens the
    store itself (so one child at a time)."""

    shares_store = False

    def __init__(self):
        log.info("this platform has no fork server: each child is a new Python process (slower start)")

    @staticmethod
    def check_embedding(cfg: Config) -> None:
        preflight.check_embedding(cfg)

    def __enter__(self) -> "SubprocessLauncher":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, owner_pid: int, budget: int, held: set[str], stop: job.StopFlag, grace: float):
        cmd = [sys.executable, str(INGEST_SCRIPT), "--child", str(owner_pid), "--budget", str(budget),
               "--held", json.dumps(sorted(held))]
        child = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, text=True)
        done: list[tuple[int, str, str]] = []
        reader = threading.Thread(target=_read_child, args=(child.stdout, done), daemon=True)
        reader.start()

        def alive(timeout: float) -> bool:
            try:
                child.wait(timeout=timeout)
                return False
            except subprocess.TimeoutExpired:
                return True

        _supervise(child.pid, alive, child.send_signal, stop, grace)
        child.wait()
        reader.join(timeout=5)
        return child.returncode, child.pid, done


def _read_child(stream, done: list) -> None:
    """Pass the child's output on, keeping its `@@done [CODE, PATH, WHY]` lines for the tally."""
    for line in stream:
        if line.startswith("@@done "):
            done.append(tuple(json.loads(line[len("@@done "):])))
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
