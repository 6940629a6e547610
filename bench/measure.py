#!/usr/bin/env python3
"""Run a contender's commands one after another and measure them.

    measure.py SPEC.json RESULT.json

SPEC: {"steps": [{"name": "...", "argv": [...], "env": {...}, "cwd": "...",
                  "log": "path prefix"}], "sample_ms": 50}

RESULT: wall seconds (all steps, and each step), exit codes, and memory:
- rusage_max_rss_mb: getrusage(RUSAGE_CHILDREN).ru_maxrss once all steps are
  waited for: the peak RSS of the largest single process among this process's
  descendants (children and the grandchildren they waited for). This is the
  "peak RSS" reported by the benchmark.
  This process makes itself a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER)
  and, once the steps are done, waits for every orphaned descendant too: a process
  that outlives its parent (the project worker's multiprocessing fork server, which
  forks and reaps the ingestion children and exits after the worker) is reparented
  here instead of to init, so its CPU time and peak RSS, and its children's, are
  counted (without this, the project's children were invisible: ~7 CPU-s for 50
  files instead of the real figure). orphans_reaped says how many there were.
- sampled_max_proc_mb / sampled_max_tree_mb: the same, sampled from /proc every
  sample_ms (largest single process, and all descendants together at one moment),
  plus the command line of that largest process.

A separate small process (standard library only) so that its own memory is not
counted and the rusage numbers belong to one contender only.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(timeout: float) -> int:
    """Wait for descendants reparented here (they hold the rest of the contender's rusage)."""
    reaped, deadline = 0, time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            return reaped
        if pid:
            reaped += 1
        elif time.monotonic() > deadline:
            return reaped
        else:
            time.sleep(0.02)


def children_of(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    seen, stack = [], children_of(pid)
    while stack:
        p = stack.pop()
        seen.append(p)
        stack.extend(children_of(p))
    return seen


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        return " ".join(os.path.basename(p.decode(errors="replace")) if i == 0 else p.decode(errors="replace")
                        for i, p in enumerate(parts[:4]) if p)
    except OSError:
        return "?"


class Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.max_proc = 0
        self.max_proc_cmd = ""
        self.max_tree = 0
        self.samples = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(self.interval):
            total = 0
            for pid in descendants(me):
                rss = rss_bytes(pid)
                total += rss
                if rss > self.max_proc:
                    self.max_proc = rss
                    self.max_proc_cmd = cmdline(pid)
            self.max_tree = max(self.max_tree, total)
            self.samples += 1


def main() -> int:
    spec_path, result_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    subreaper = become_subreaper()
    sampler = Sampler(spec.get("sample_ms", 50) / 1000)
    sampler.start()
    steps = []
    started = time.monotonic()
    rc = 0
    for step in spec["steps"]:
        env = dict(os.environ)
        env.update(step.get("env") or {})
        log = step.get("log")
        out = open(log + ".out", "wb") if log else subprocess.DEVNULL
        err = open(log + ".err", "wb") if log else subprocess.DEVNULL
        t0 = time.monotonic()
        try:
            rc = subprocess.call(step["argv"], env=env, cwd=step.get("cwd"), stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
        finally:
            if log:
                out.close()
                err.close()
        steps.append({"name": step.get("name", step["argv"][0]), "seconds": time.monotonic() - t0, "rc": rc})
        if rc != 0:
            break
    wall = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    orphans = reap_orphans(spec.get("orphan_wait_s", 30)) if subreaper else 0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "wall_s": wall, "rc": rc, "steps": steps,
        "rusage_max_rss_mb": usage.ru_maxrss / 1024,
        "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime,
        "measure_cpu_s": me.ru_utime + me.ru_stime,
        "sampled_max_proc_mb": sampler.max_proc / 2**20,
        "sampled_max_proc_cmd": sampler.max_proc_cmd,
        "sampled_max_tree_mb": sampler.max_tree / 2**20,
        "samples": sampler.samples,
        "subreaper": subreaper, "orphans_reaped": orphans,
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
