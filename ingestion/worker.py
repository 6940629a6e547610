"""The queue worker: one subprocess per file, so memory is given back after each.

Before work: builds the queue if there is none, returns stale `processing` entries
(owner gone, or lease expired) to pending, and finishes split files whose parts
are all stored. Then, MAX_ITERATIONS times (0: until the queue is empty), claims a
file and runs `ingest_one_file.py --claimed FILE` for it.

When a child dies without recording an outcome:
- killed by SIGKILL: the kernel's OOM killer is the usual cause. With cgroup
  evidence (memory.events oom_kill went up) or on the file's second kill, it is
  split and its parts are queued; a first kill without evidence just requeues it
  (a kill -9 by hand should not change how a file is chunked);
- any other death: the file fails with the exit status as its reason.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ingestion import file_queue, progress, runner, scan, state
from ingestion.errors import (EXIT_API_DOWN, EXIT_AUTH, EXIT_BUSY, EXIT_CONFIG, EXIT_FILE_FAILED, EXIT_INTERRUPTED,
                              EXIT_MEMORY, EXIT_OK)
from ingestion.settings import Config, raw

log = logging.getLogger("ingestion")
INGEST_SCRIPT = Path(__file__).resolve().parent / "ingest_one_file.py"
GRACE_SECONDS = 25  # Render waits 30 s between SIGTERM and SIGKILL
CGROUP_EVENTS = Path("/sys/fs/cgroup/memory.events")


@dataclass
class Tally:
    runs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.runs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def oom_kills() -> int | None:
    try:
        for line in CGROUP_EVENTS.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


BYTES_PER_DIMENSION = 4.1  # measured: ~6.3 KB of RAM per 1536-dimension vector in an HNSW index
WARN_AT = 0.75


def memory_budget_bytes() -> int | None:
    """This machine's (or container's) memory: cgroup limit, else MemTotal."""
    for path, scale in (("/sys/fs/cgroup/memory.max", 1), ("/proc/meminfo", 1024)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("memory.max"):
            if text.strip().isdigit():
                return int(text)
            continue
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * scale
    return None


def capacity_warning(cfg: Config, vectors: int) -> str | None:
    """In embedded mode every process that opens the store loads its whole index: warn near the limit."""
    from ingestion.store import model_dimensions

    budget = memory_budget_bytes()
    dims = model_dimensions(cfg)
    if cfg.remote_store or not budget or not dims:
        return None
    need = vectors * dims * BYTES_PER_DIMENSION
    if need < WARN_AT * budget:
        return None
    fits = int(budget * 0.9 / (dims * BYTES_PER_DIMENSION))
    return (f"the embedded store holds about {vectors:,} vectors of {dims} dimensions (~{need / 2**30:.1f} GB of index "
            f"loaded by every ingesting process); this machine has {budget / 2**30:.1f} GB, room for about "
            f"{fits:,}. Use a Chroma server (CHROMA_HOST), fewer EMBEDDING_DIMENSIONS, or more memory")


def prepare(cfg: Config) -> None:
    """Queue if missing; stale leases back to pending; finished split files completed."""
    if not cfg.queue_path.exists():
        summary, q = scan.refresh(cfg)
        print(summary.line(q))
    with state.transaction(cfg) as (q, c):
        stale = file_queue.release_stale(q, cfg.lease_seconds)
        ready = [p for p, e in q["files"].items()
                 if e.get("parts") and all(file_queue.where(q, x) == "completed" for x in e["parts"])]
        vectors = sum(d.get("chunks") or 0 for d in c["processed_files"].values())
    warning = capacity_warning(cfg, vectors)
    if warning:
        log.warning("%s", warning)
    for path in stale:
        log.warning("returned %s to pending: its process is gone or its lease expired", path)
    for original in ready:
        runner.finalize_split(cfg, original)


def run(cfg: Config, max_iterations: int, stop: runner.StopFlag) -> int:
    runner.check_ready(cfg)
    in_shard = scan.shard_filter(raw("WORKER_SHARD"), cfg.transcripts_dir)
    held: set[str] = set()  # files another machine was ingesting: not again in this run
    accept = lambda p: in_shard(p) and p not in held  # noqa: E731
    prepare(cfg)
    tally = Tally()
    code = EXIT_OK
    api_down = 0
    with state.transaction(cfg) as (q, _):
        todo = len(q["pending"])
    with progress.bar(min(todo, max_iterations or todo), "files", "files") as advance:
        while (max_iterations == 0 or tally.runs < max_iterations) and not stop():
            with state.transaction(cfg) as (q, _):
                path = file_queue.claim(q, accept=accept)
            if path is None:
                break
            budget = cfg.files_per_child if max_iterations == 0 else min(cfg.files_per_child,
                                                                         max_iterations - tally.runs)
            oom_before = oom_kills() or 0
            rc, child, done = _run_child(cfg, path, budget - 1, stop)
            stuck = _held_by(cfg, child)
            if budget == 1 and not done and path not in stuck:
                done = [(rc, path)]  # a one-file child's exit code is its file's outcome
            for file_rc, file_path in done:
                tally.add(_outcome_name(file_rc))
                advance(1)
                if file_rc == EXIT_BUSY:
                    held.add(file_path)
            for held_path in stuck:
                tally.add(_after_child(cfg, held_path, rc, stop, oom_seen=(oom_kills() or 0) > oom_before))
                advance(1)
            if rc in (EXIT_AUTH, EXIT_CONFIG):
                code = rc
                break
            api_down = api_down + 1 if rc == EXIT_API_DOWN else 0
            if api_down >= 2:
                log.error("the embeddings API failed for two files in a row; stopping this run (files requeued)")
                code = EXIT_API_DOWN
                break
    if stop():
        code = EXIT_INTERRUPTED
    with state.transaction(cfg) as (q, _):
        counts = file_queue.counts(q)
    done = ", ".join(f"{n} {k}" for k, n in sorted(tally.outcomes.items())) or "none"
    print(f"worker: {tally.runs} files run ({done}); queue: pending {counts['pending']}, "
          f"processing {counts['processing']}, completed {counts['completed']}, failed {counts['failed']}")
    return code


def _run_child(cfg: Config, path: str, more: int, stop: runner.StopFlag) -> tuple[int, int, list]:
    """Run the child for path (and `more` files it claims itself); on SIGTERM forward it, and
    kill the child after the grace period. Returns (exit status, child pid, [(code, path)] done)."""
    cmd = [sys.executable, str(INGEST_SCRIPT), "--claimed", path] + (["--more", str(more)] if more > 0 else [])
    child = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, text=True)
    with state.transaction(cfg) as (q, _):
        lease = file_queue.info(q, path).get("lease")
        if lease is not None:
            lease["child_pid"] = child.pid
    done: list[tuple[int, str]] = []
    reader = threading.Thread(target=_read_child, args=(child.stdout, done), daemon=True)
    reader.start()
    forwarded_at = None
    while True:
        try:
            rc = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop() and forwarded_at is None:
            child.send_signal(signal.SIGTERM)
            forwarded_at = time.monotonic()
        elif forwarded_at is not None and time.monotonic() - forwarded_at > GRACE_SECONDS:
            child.kill()
    reader.join(timeout=5)
    return rc, child.pid, done


def _read_child(stream, done: list) -> None:
    """Pass the child's output on, keeping its `@@done CODE PATH` lines for the tally."""
    for line in stream:
        if line.startswith("@@done "):
            code, _, path = line[len("@@done "):].rstrip("\n").partition(" ")
            done.append((int(code), path))
        else:
            sys.stdout.write(line)
            sys.stdout.flush()


def _held_by(cfg: Config, child_pid: int) -> list[str]:
    """Files still in processing under this worker or that child: it died without an outcome."""
    with state.transaction(cfg) as (q, _):
        return [p for p in q["processing"]
                if (lease := file_queue.info(q, p).get("lease") or {}).get("child_pid") == child_pid
                or (lease.get("pid") == os.getpid() and lease.get("host") == socket.gethostname())]


def _outcome_name(code: int) -> str:
    return {EXIT_OK: "completed", EXIT_FILE_FAILED: "failed", EXIT_MEMORY: "split", EXIT_BUSY: "held elsewhere",
            EXIT_INTERRUPTED: "released", EXIT_API_DOWN: "requeued"}.get(code, f"exit {code}")


def _after_child(cfg: Config, path: str, rc: int, stop: runner.StopFlag, oom_seen: bool) -> str:
    """Make sure the file left processing; returns the outcome's name."""
    with state.transaction(cfg) as (q, _):
        where = file_queue.where(q, path)
        if where != "processing":
            return {"completed": "completed", "failed": "failed", "pending": "requeued",
                    None: "split"}.get(where, where or "split")
        if rc == -signal.SIGKILL:
            entry = file_queue.info(q, path)
            entry["kills"] = entry.get("kills", 0) + 1
            if not oom_seen and entry["kills"] < 2:
                file_queue.release(q, path)
                log.warning("%s: its process was killed (SIGKILL); requeued (a second kill splits it)", path)
                return "requeued"
        elif rc in (-signal.SIGTERM, EXIT_INTERRUPTED) or stop():
            file_queue.release(q, path)
            return "released"
        elif rc != EXIT_MEMORY:
            reason = f"ingest_one_file.py exited with {_describe(rc)} without recording an outcome"
            file_queue.fail(q, path, reason)
            log.error("failed %s: %s", path, reason)
            return "failed"
    return "split" if runner.split_after_oom(cfg, path, f"process {_describe(rc)}") else "failed"


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"
