#!/usr/bin/env python3
"""Measure what an embedded store costs (index RAM, each process's peak, the cgroup's rss and page cache,
disk) and check the capacity plan (ingestion/run/capacity.py, whose constants come from here) against the
store that results.

    TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken .venv/bin/python bench/capacity_plan.py \\
        --points 256:0,256:26000,1536:0,1536:10000 --files 8

For each point DIMS:N: a store in the project's format (the two real transcripts ingested by the
worker at DIMS dimensions, then N filler records copied from their chunks with random vectors and
hashes of their own), reopened once in a process of its own (Chroma's log applied; the RAM that costs
is the index), then FILES synthetic 60 KB transcripts (bench/make_corpus.py) queued on it;
`generate_file_queue.py --dry-run` prints the plan; the worker ingests them on its defaults inside a
cgroup memory group of its own (when one can be made: root, cgroup v1 or v2), watched until it exits:
the VmHWM of the worker, the fork server and the largest child, the group's largest rss and
rss + page cache (memory.stat), its peak (max_usage_in_bytes) and OOM kills, then the vectors
stored, the index RAM and the disk added. Prints a Markdown table, projection next to result.

`memory_group()` is also what tests/test_capacity.py uses to run the worker under a real limit.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestion.common import procinfo  # noqa: E402


# ---- a cgroup memory group of our own ---------------------------------------------------------
class MemoryGroup:
    """A memory cgroup made under this process's own group (v1 or v2), with a limit; commands started
    with `popen` run inside it."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind

    def popen(self, argv, **kw) -> subprocess.Popen:
        procs = str(self.folder / "cgroup.procs")

        def enter() -> None:  # in the child, before exec: it and all it starts are in the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.Popen(argv, preexec_fn=enter, **kw)

    def run(self, argv, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        with self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as p:
            out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def pids(self) -> list[int]:
        return [int(x) for x in (self.folder / "cgroup.procs").read_text().split()]

    def remove(self, timeout: float = 30) -> None:
        """Remove the group once the processes started in it are gone (an orphaned fork server ends a moment
        after the worker that started it; one still there at the deadline is killed)."""
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the processes to end, not a fixed wait
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.pids() and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        self.folder.rmdir()

    def oom_kills(self) -> int:
        name = "memory.events" if self.kind == "v2" else "memory.oom_control"
        for line in (self.folder / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def oom_control(self) -> str:
        return (self.folder / ("memory.events" if self.kind == "v2" else "memory.oom_control")).read_text()

    def stat(self) -> dict[str, int]:
        """memory.stat: rss and cache (v1: total_rss, total_cache), anon and file (v2), in bytes."""
        got = {}
        with contextlib.suppress(OSError):
            for line in (self.folder / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if value.isdigit():
                    got[key] = int(value)
        return got

    def peak_bytes(self) -> int | None:
        """The group's peak memory charge (cgroup v1: max_usage_in_bytes; v2: memory.peak, if the kernel has it)."""
        name = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        try:
            return int((self.folder / name).read_text().split()[0])
        except (OSError, ValueError):
            return None


@contextlib.contextmanager
def memory_group(name: str, limit_bytes: int):
    """A fresh memory group limited to limit_bytes, removed afterwards; yields None where none can be made
    (not root, no memory controller, read-only cgroup fs). Every process started in it must have ended
    (and been waited for) when the block ends."""
    group = None
    for kind, parent, _ in procinfo.memory_groups():
        folder = parent / name
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            (folder / ("memory.max" if kind == "v2" else "memory.limit_in_bytes")).write_text(str(limit_bytes))
            if kind == "v1":
                with contextlib.suppress(OSError):  # no swap to escape into
                    (folder / "memory.swappiness").write_text("0")
            group = MemoryGroup(folder, kind)
            break
        except OSError:
            folder.rmdir()
    try:
        yield group
    finally:
        if group is not None:
            group.remove()


# ---- a store in the project's format, filled cheaply -------------------------------------------
def tool_env(api, **extra) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"],
            "OPENAI_API_KEY": api.api_key, "OPENAI_BASE_URL": api.base_url, **extra}


def script(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "ingestion" / name)]


def seed_store(work: Path, api, dims: int) -> Path:
    """The two real transcripts ingested by the worker at DIMS dimensions: a store of ours to copy."""
    base = work / f"seed-{dims}"
    if base.exists():
        return base
    tx = base / "transcripts"
    tx.mkdir(parents=True)
    for p in sorted((ROOT / "tests" / "fixtures" / "real").glob("*.txt")):
        shutil.copy(p, tx / p.name)
    env = tool_env(api, TRANSCRIPTS_DIR=str(tx), CHECKPOINT_DIR=str(base / "ck"), CHROMA_PATH=str(base / "db"),
                    EMBEDDING_DIMENSIONS=str(dims), MAX_ITERATIONS="0")
    out = subprocess.run(script("process_queue_worker.py"), env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    return base


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fill(db: Path, n: int, seed: int = 1, text: bool = True) -> None:
    """Add n records to the store's collection: the documents and metadata of its own chunks over
    and over (a filler source each 62 records, as a real transcript makes), random unit vectors.
    text=False: a one-word document each (faster; the index in RAM is the same, the disk is not)."""
    import chromadb
    import numpy as np
    from chromadb.api.client import SharedSystemClient

    if n == 0:
        return
    client = chromadb.PersistentClient(path=str(db))
    col = client.get_collection("transcripts", embedding_function=None)
    got = col.get(include=["documents", "metadatas", "embeddings"])
    docs, metas, dims = got["documents"], got["metadatas"], len(got["embeddings"][0])
    rng = np.random.default_rng(seed)
    batch = client.get_max_batch_size()
    for start in range(0, n, batch):
        k = min(batch, n - start)
        vectors = rng.standard_normal((k, dims), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"filler-{start + i}" for i in range(k)]
        # each record its own content and file hashes, as in a real store (deduplication keeps one chunk a
        # text): copied hashes would make every dedupe lookup (store.embeddings_by_content) fetch ~n/123
        # stored embeddings a chunk, a worker-RAM cost no real store has
        meta = [{**metas[(start + i) % len(metas)], "source": f"/filler/{(start + i) // 62}.txt",
                 "chunk_index": (start + i) % 62, "content_sha256": _sha(f"filler chunk {seed} {start + i}"),
                 "file_sha256": _sha(f"filler file {seed} {(start + i) // 62}")} for i in range(k)]
        col.add(ids=ids, embeddings=vectors, documents=[docs[(start + i) % len(docs)] if text else "filler" for i in range(k)],
                metadatas=meta)
    SharedSystemClient.clear_system_cache()


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def stored(db: Path) -> int:
    import chromadb
    from chromadb.api.client import SharedSystemClient

    n = chromadb.PersistentClient(path=str(db)).get_collection("transcripts", embedding_function=None).count()
    SharedSystemClient.clear_system_cache()
    return n


# ---- one point ---------------------------------------------------------------------------------
INDEX_PROBE = """
import sys, numpy as np, chromadb
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
client = chromadb.PersistentClient(path=sys.argv[1])
before = rss()
col = client.get_collection("transcripts", embedding_function=None)
col.query(query_embeddings=np.ones((1, int(sys.argv[2])), dtype=np.float32), n_results=1)
print(col.count(), rss() - before)
"""


def index_ram(db: Path, dims: int) -> tuple[int, int]:
    """(vectors, bytes of RAM that opening the collection and one query cost), in a process of its own:
    the index as a worker loads it. Run once after the fill, it also applies Chroma's log to the index."""
    out = subprocess.run([sys.executable, "-c", INDEX_PROBE, str(db), str(dims)], capture_output=True, text=True,
                         check=True)
    vectors, nbytes = out.stdout.split()
    return int(vectors), int(nbytes)


def _hwm_kb(pid: int, worker: int) -> tuple[str, int]:
    """(what the process is, its peak RSS in KB): the worker, what it started (the fork server, the
    resource tracker), or a child (forked by the fork server)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().decode(errors="replace")
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    parent = int(status["PPid"])
    role = ("worker" if pid == worker else "tracker" if "resource_tracker" in cmd else
            "fork server" if parent == worker else "child")
    return role, int(status["VmHWM"].split()[0])


def watch(proc: subprocess.Popen, group, timeout: float = 3600) -> dict:
    """Wait for proc (started in group, or without one); returns peaks read until it exits: each process's
    VmHWM by role (the largest child's), and the group's largest rss (anonymous memory: what cannot be
    reclaimed) and rss + page cache (cgroup v1 memory.stat)."""
    peaks = {"worker": 0, "fork server": 0, "child": 0, "children": 0, "rss": 0, "rss+cache": 0}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        pids = group.pids() if group else [proc.pid]
        for pid in pids:
            with contextlib.suppress(OSError, KeyError, ValueError):  # (ended, or a zombie: no VmHWM)
                role, hwm = _hwm_kb(pid, proc.pid)
                if role in peaks:
                    peaks[role] = max(peaks[role], hwm * 1024)
        peaks["children"] = max(peaks["children"], sum(1 for pid in pids if pid != proc.pid) - 2)
        stat = group.stat() if group else {}
        if "total_rss" in stat or "anon" in stat:
            rss = stat.get("total_rss", stat.get("anon", 0))
            peaks["rss"] = max(peaks["rss"], rss)
            peaks["rss+cache"] = max(peaks["rss+cache"], rss + stat.get("total_cache", stat.get("file", 0)))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)
    return peaks


def plan_numbers(text: str) -> dict:
    """The figures of generate_file_queue.py --dry-run's plan lines (see capacity.Plan.lines)."""
    got = {}
    m = re.search(r"store after the queue: ([\d,]+) vectors", text)
    if m:
        got["vectors"] = int(m.group(1).replace(",", ""))
    m = re.search(r"index ~([\d,]+) MB", text)
    if m:
        got["index_mb"] = int(m.group(1).replace(",", ""))
    m = re.search(r"run ~([\d,]+) MB", text)
    if m:
        got["run_mb"] = int(m.group(1).replace(",", ""))
    m = re.search(r"disk ~([\d,.]+) (MB|GB)", text)
    if m:
        got["disk_mb"] = float(m.group(1).replace(",", "")) * (1024 if m.group(2) == "GB" else 1)
    return got


def point(work: Path, api, dims: int, n: int, files: int, limit: int) -> dict:
    from bench.make_corpus import make_files

    base = seed_store(work, api, dims)
    here = work / f"p-{dims}-{n}"
    shutil.rmtree(here, ignore_errors=True)
    shutil.copytree(base / "db", here / "db")
    t = time.time()
    fill(here / "db", n, text=False)
    fill_s = time.time() - t
    before, index_before = index_ram(here / "db", dims)  # (also: Chroma's log applied, as a store in use has it)
    tx = here / "transcripts"
    make_files(tx, files, 60, seed=dims + n)
    env = tool_env(api, TRANSCRIPTS_DIR=str(tx), CHECKPOINT_DIR=str(here / "ck"), CHROMA_PATH=str(here / "db"),
                    EMBEDDING_DIMENSIONS=str(dims), MAX_ITERATIONS="0", HOME=str(here))
    dry = subprocess.run(script("generate_file_queue.py") + ["--dry-run"], env=env, capture_output=True, text=True)
    plan = plan_numbers(dry.stdout)
    subprocess.run(script("generate_file_queue.py"), env=env, check=True, capture_output=True)
    before_disk = disk_bytes(here / "db")
    row = {"dims": dims, "filler": n, "fill_s": fill_s, "plan": plan, "dry_run": dry.stdout + dry.stderr,
           "index_before": index_before, "vectors_before": before}
    with memory_group(f"capacity-plan-{os.getpid()}", limit) as group:
        launch = group.popen if group else subprocess.Popen
        with launch(script("process_queue_worker.py"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True) as proc:
            row["peaks"] = watch(proc, group)
            row["out"] = proc.stdout.read()
        row["rc"] = proc.returncode
        row["group_peak"] = group.peak_bytes() if group else None
        row["oom_kill"] = group.oom_kills() if group else None
    row["vectors"], row["index"] = index_ram(here / "db", dims)
    row["disk_more"] = disk_bytes(here / "db") - before_disk
    shutil.rmtree(here, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default="256:0,256:26000,1536:0,1536:10000",
                    help="DIMS:FILLER_VECTORS, comma-separated")
    ap.add_argument("--files", type=int, default=8, help="synthetic 60 KB transcripts ingested at each point")
    ap.add_argument("--limit-mb", type=int, default=16384, help="the memory group's limit")
    ap.add_argument("--work", default=None, help="folder for the stores (default: a temp folder, removed)")
    args = ap.parse_args()
    from local_openai.testing import running_server

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="capacity-plan-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with running_server() as api:
        for spec in args.points.split(","):
            dims, n = (int(x) for x in spec.split(":"))
            r = point(work, api, dims, n, args.files, args.limit_mb * 2**20)
            rows.append(r)
            print(f"{dims}:{n} rc {r['rc']} {r['peaks']} group peak {r['group_peak']} vectors {r['vectors']} index "
                  f"{r['index']} (before: {r['vectors_before']} {r['index_before']}) plan {r['plan']}", flush=True)
            if r["rc"] != 0:
                print(r["out"][-3000:], r["dry_run"][-2000:])
    mb = 2**20
    print("\n| dims | filler | vectors | plan | index RAM | plan | worker | fork server | a child (of n) "
          "| group rss | + cache | plan: run | disk more | plan | oom_kill |\n" + "|---:" * 15 + "|")
    for r in rows:
        p, k = r["plan"], r["peaks"]
        print(f"| {r['dims']} | {r['filler']:,} | {r['vectors']:,} | {p.get('vectors', 0):,} | {r['index'] / mb:.0f} MB "
              f"| {p.get('index_mb', '?')} MB | {k['worker'] / mb:.0f} MB | {k['fork server'] / mb:.0f} MB "
              f"| {k['child'] / mb:.0f} MB ({k['children']}) | {k['rss'] / mb:.0f} MB | {k['rss+cache'] / mb:.0f} MB "
              f"| {p.get('run_mb', '?')} MB | {r['disk_more'] / mb:.1f} MB | {p.get('disk_mb', '?')} MB "
              f"| {r['oom_kill']} |", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
