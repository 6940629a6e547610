#!/usr/bin/env python3
"""Scale: what a store of N vectors costs each file ingested into it, and the operator commands.

    TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken .venv/bin/python bench/scale.py \\
        --sizes 0,100000,250000,600000 --files 40 --latency-ms 150 \\
        --work /tmp/scale-bench/work --keep /tmp/scale-bench/fills --label embedded

For each N of --sizes:
1. fill: a fresh embedded Chroma store (a folder) with N random vectors in the project's own
   format, of the probe collection's size (1536 on the defaults; EMBEDDING_DIMENSIONS in the
   environment makes the probe, so the whole run, use another). The format is not written down here: one small transcript is first ingested into the
   fresh store by the real scripts (generate_file_queue.py, process_queue_worker.py), which create
   and stamp the collection as the pipeline does; the filler reads that collection back (its name,
   record, one chunk's id and metadata, one record of the `<name>_files` collection) and clones the
   shape for N chunks of fake files (C chunks a file, C = the probe file's chunk count; distinct
   sources, ids, hashes; text: distinct slices of the real transcripts in tests/fixtures/real), each
   fake file recorded as finished in `<name>_files` like the pipeline does. The fake sources exist on
   disk as empty files outside TRANSCRIPTS_DIR, so that `--prune` sees nothing gone (the normal case).
   Batches of --batch records a call, in a subprocess (the index stays out of this process); then
   the store is opened once more (Chroma applies its log). With --keep DIR the filled store is kept
   in DIR/fill-N and reused by later runs (each run works on a copy of it).
2. ingest: the same --files transcripts (bench/make_corpus.py, --size-kb each) with the worker on
   the project's defaults (MAX_ITERATIONS=0 only, so that it runs to the end of the queue):
   `generate_file_queue.py`, then `process_queue_worker.py`, as subprocesses, the embeddings API being
   the project's local OpenAI-compatible server at --latency-ms a request. Measured: wall, CPU
   (user+sys of the worker's process tree: RUSAGE_CHILDREN deltas, this process being the tree's
   child subreaper so that its fork server and children are reaped here), the worker's peak RSS
   (VmHWM, sampled from /proc; the tree's peak summed RSS too).
3. the operator commands on the store (N + the files): `process_queue_worker.py --status`,
   `optimize_chromadb.py --dry-run`, `generate_file_queue.py --prune --dry-run`, one
   `query_chromadb.py` question: wall seconds each.
--memory-limit-mb M: the capacity plan (`generate_file_queue.py --dry-run`, before the queue is made)
and the worker run inside a cgroup memory group limited to M MB (bench/capacity_plan.py's; root,
cgroup v1 or v2): its OOM kills and peak charge are recorded, and the plan's projection (vectors, the
worker's RAM) is set beside the store that results (count) and the worker's peak RSS.
--server: the same against a `chroma run` server on a copy of the filled folder (the Chroma server's
peak RSS and CPU too). --profile: the worker runs under bench/server_mode.py's store-call profiler
(every Store method and Chroma call timed) and the per-file table is printed and saved.

Prints a Markdown table; the raw numbers go to bench/results/scale-<label>.json (with `uptime`).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

# ---- the project's code this bench uses: ONE place ------------------------------------------------
# No module of ingestion/ is imported: the pipeline runs as its scripts, and the store's format is read
# back from a store those scripts wrote. When ingestion/ moves, only these paths change.
SCRIPTS = {
    "queue": ROOT / "ingestion" / "generate_file_queue.py",
    "worker": ROOT / "ingestion" / "process_queue_worker.py",
    "optimize": ROOT / "ingestion" / "optimize_chromadb.py",
    "query": ROOT / "ingestion" / "query_chromadb.py",
}
PROFILER = BENCH / "server_mode.py"  # --profile: its --worker-profile runs the worker with its store calls timed
# (that script imports the library: ingestion.storage.store, storage.lent_store, run.worker, ...); its summarize_profile formats them
# ----------------------------------------------------------------------------------------------------

KEY = "sk-bench-000000000000"
QUESTION = "What did the Solicitor General argue about the individual mandate?"


# ---- the filler (runs in a subprocess: --fill STORE N) ---------------------------------------------
def source_key(source: str) -> str:
    """The pipeline's id of a source (checked against the probe's ids before anything is written)."""
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def fixture_text() -> str:
    import make_corpus

    return "".join("".join(lines) for lines in make_corpus.load_lines())


def fill_store(folder: Path, n: int, batch: int, seed: int) -> dict:
    """Fill folder/db (holding the probe file's chunks) to n filler chunks; returns what it cloned."""
    import chromadb
    import numpy as np
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder / "db"), settings=Settings(anonymized_telemetry=False))
    cols = {c.name: c for c in client.list_collections()}
    ours = [c for c in cols.values() if (c.metadata or {}).get("made_by")]
    if len(ours) != 1:
        sys.exit(f"expected one stamped collection in the probe store, found {sorted(cols)}")
    chunks = client.get_collection(ours[0].name, embedding_function=None)
    files = client.get_collection(ours[0].name + "_files", embedding_function=None)
    probe = chunks.get(include=["metadatas", "documents", "embeddings"])
    dims = len(probe["embeddings"][0])
    probe_files = files.get(include=["metadatas", "documents", "embeddings"])
    template = probe["metadatas"][0]
    for i, m in zip(probe["ids"], probe["metadatas"]):  # the id format, as the pipeline makes it
        if i != f"{source_key(m['source'])}-{m['content_sha256'][:32]}":
            sys.exit(f"probe id {i} is not source_key(source)-content_sha256[:32]: the id format changed")
    for i, m, d in zip(probe_files["ids"], probe_files["metadatas"], probe_files["documents"]):
        if i != source_key(m["source"]) or d != m["source"]:
            sys.exit(f"probe file record {i} is not source_key(source) with the source as text: the format changed")
    if len(probe_files["embeddings"][0]) != 2:
        sys.exit("the files collection's vectors are no longer 2-d")
    per_file = len(probe["ids"])  # chunks a file, as the probe file made
    doc_lengths = sorted(len(d) for d in probe["documents"])
    speakers = sorted({m.get("speakers", "") for m in probe["metadatas"]})
    text = fixture_text()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    known = {"source", "chunk_index", "token_count", "content_sha256", "file_sha256", "speakers", "ingested_at"}
    max_batch = min(batch, client.get_max_batch_size())
    sources_dir = folder / "filler-sources"
    nfiles = math.ceil(n / per_file) if n else 0
    started = time.monotonic()
    done = 0
    file_rows: list[tuple] = []
    pending: dict[str, list] = {"ids": [], "metadatas": [], "documents": []}

    def flush_chunks() -> None:
        k = len(pending["ids"])
        if not k:
            return
        vecs = nrng.standard_normal((k, dims), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        chunks.add(ids=pending["ids"], embeddings=vecs, documents=pending["documents"], metadatas=pending["metadatas"])
        for v in pending.values():
            v.clear()

    def flush_files() -> None:
        if not file_rows:
            return
        angles = [int(sha[:8], 16) / 0xFFFFFFFF * 2 * math.pi for _, sha, _, _ in file_rows]
        files.add(ids=[source_key(s) for s, _, _, _ in file_rows],
                  embeddings=[[math.cos(a), math.sin(a)] for a in angles],
                  documents=[s for s, _, _, _ in file_rows],
                  metadatas=[{"source": s, "file_sha256": sha, "chunks": c, "tokens": t} for s, sha, c, t in file_rows])
        file_rows.clear()

    for f in range(nfiles):
        source = str(sources_dir / f"{f // 1000:03d}" / f"transcript_filler_{f:06d}.txt")
        Path(source).parent.mkdir(parents=True, exist_ok=True)
        Path(source).touch()
        file_sha = f"{rng.getrandbits(256):064x}"
        ingested = int(template.get("ingested_at", time.time())) - rng.randrange(0, 90 * 86400)
        count = min(per_file, n - f * per_file)
        tokens = 0
        for i in range(count):
            length = rng.choice(doc_lengths)
            off = rng.randrange(0, len(text) - length)
            doc = f"(filler {f}:{i})\n" + text[off:off + length]
            content = hashlib.sha256(doc.encode()).hexdigest()
            tc = rng.randint(350, 500)
            tokens += tc
            meta = {k: v for k, v in template.items() if k not in known}  # part, start_time, encoding, ...
            meta.update({"source": source, "chunk_index": i, "token_count": tc, "content_sha256": content,
                         "file_sha256": file_sha, "ingested_at": ingested})
            if "speakers" in template:
                meta["speakers"] = rng.choice(speakers)
            pending["ids"].append(f"{source_key(source)}-{content[:32]}")
            pending["metadatas"].append(meta)
            pending["documents"].append(doc)
            if len(pending["ids"]) >= max_batch:
                flush_chunks()
                done += max_batch
                if done % 50_000 < max_batch:
                    print(f"  filled {done:,}/{n:,} ({time.monotonic() - started:.0f} s)", flush=True)
        file_rows.append((source, file_sha, count, tokens))
        if len(file_rows) >= max_batch:
            flush_files()
    flush_chunks()
    flush_files()
    return {"collection": chunks.name, "record": dict(chunks.metadata or {}), "chunks_per_file": per_file,
            "filler_files": nfiles, "dims": dims, "template_metadata": template, "template_id": probe["ids"][0],
            "count": chunks.count(), "files_count": files.count()}


def reopen(folder: Path) -> dict:
    """Open the filled store once more (Chroma applies what is left of its log), count, query once."""
    import chromadb
    import numpy as np
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder / "db"), settings=Settings(anonymized_telemetry=False))
    col = [c for c in client.list_collections() if (c.metadata or {}).get("made_by")][0]
    col = client.get_collection(col.name, embedding_function=None)
    dims = len(col.get(limit=1, include=["embeddings"])["embeddings"][0])
    col.query(query_embeddings=np.ones((1, dims), dtype=np.float32), n_results=1)
    return {"count": col.count()}


def set_hnsw(folder: Path, spec: str) -> None:
    """Change the copied store's collection HNSW settings that Chroma lets change (batch_size, sync_threshold,
    ef_search, ...): spec like "sync_threshold=100000,batch_size=1000"."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder / "db"), settings=Settings(anonymized_telemetry=False))
    col = [c for c in client.list_collections() if (c.metadata or {}).get("made_by")][0]
    hnsw = {k: int(v) for k, v in (x.split("=") for x in spec.split(","))}
    client.get_collection(col.name, embedding_function=None).modify(configuration={"hnsw": hnsw})
    print(f"  hnsw of {col.name}: {client.get_collection(col.name).configuration_json.get('hnsw')}", flush=True)


# ---- measuring processes ---------------------------------------------------------------------------
def become_subreaper() -> bool:
    """Orphans of the worker's tree (its fork server, ...) come to this process, which reaps them, so that
    their CPU time lands in RUSAGE_CHILDREN."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = children_of(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Sampler(threading.Thread):
    """Peak RSS of a process (VmHWM), of its whole tree (sum of VmRSS), and of any one process in it."""

    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.own_hwm_kb = self.tree_rss_kb = self.max_one_hwm_kb = self.max_procs = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            pids = tree(self.pid)
            self.own_hwm_kb = max(self.own_hwm_kb, status_kb(self.pid, "VmHWM"))
            self.tree_rss_kb = max(self.tree_rss_kb, sum(status_kb(p, "VmRSS") for p in pids))
            self.max_one_hwm_kb = max([self.max_one_hwm_kb] + [status_kb(p, "VmHWM") for p in pids])
            self.max_procs = max(self.max_procs, len(pids))
            self.halt.wait(self.period)


def reap_orphans(keep: set[int], timeout: float = 30.0) -> None:
    """Wait for the measured tree's orphans that came to us (a subreaper) and reap them."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        mine = [p for p in children_of().get(os.getpid(), []) if p not in keep]
        if not mine:
            return
        for p in mine:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)


def measured(argv: list[str], env: dict, log: Path, keep: set[int], timeout: float, group=None) -> dict:
    """Run argv to its end (inside the memory group, if one is given): wall, CPU of its tree, peak RSS; its
    output in log.out/.err."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        start = group.popen if group is not None else subprocess.Popen
        proc = start(argv, env=env, stdout=out, stderr=err, cwd=log.parent)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in reversed(tree(proc.pid)):
                with_suppress_kill(p)
            rc = proc.wait()
            rc = f"timeout after {timeout:.0f} s"
        wall = time.monotonic() - t
        sampler.halt.set()
        sampler.join()
    reap_orphans(keep)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rc": rc, "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "cpu_s": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "peak_rss_mb": sampler.own_hwm_kb / 1024, "tree_peak_rss_mb": sampler.tree_rss_kb / 1024,
            "largest_process_peak_mb": sampler.max_one_hwm_kb / 1024, "max_processes": sampler.max_procs}


def with_suppress_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else -1


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- a Chroma server -------------------------------------------------------------------------------
def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- one size ----------------------------------------------------------------------------------------
def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS[name]), *args]


def run_quiet(argv, env, log: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        r = subprocess.run(argv, env=env, stdout=out, stderr=err, cwd=log.parent, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed (exit {r.returncode}): see {log}.err")
    return r


def make_fill(folder: Path, n: int, args, api_env: dict) -> dict:
    """A filled store in folder/db (probe file ingested by the real scripts, then N filler chunks)."""
    import make_corpus

    marker = folder / "fill.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        print(f"N={n:,}: reusing the filled store {folder} (filled in {info['fill_s']:.0f} s)", flush=True)
        info["reused"] = True
        return info
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t = time.monotonic()
    make_corpus.make_files(folder / "probe-corpus", 1, args.size_kb, seed=10_000 + args.seed)
    env = {**api_env, "TRANSCRIPTS_DIR": str(folder / "probe-corpus"), "CHECKPOINT_DIR": str(folder / "probe-ck"),
           "CHROMA_PATH": str(folder / "db")}
    run_quiet(script("queue"), env, folder / "probe-queue")
    run_quiet(script("worker"), env, folder / "probe-worker")
    probe_s = time.monotonic() - t
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fill", str(folder), str(n),
                          "--batch", str(args.batch), "--seed", str(args.seed)], text=True, stdout=subprocess.PIPE)
    if out.returncode != 0:
        sys.exit(f"fill of {n} failed")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    fill_s = time.monotonic() - t
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reopen", str(folder)], text=True,
                         stdout=subprocess.PIPE)
    reopen_s = time.monotonic() - t
    info.update({"n": n, "probe_s": probe_s, "fill_add_s": fill_s, "reopen_s": reopen_s, "fill_s": fill_s + reopen_s,
                 "reopened": json.loads(out.stdout.strip().splitlines()[-1]), "store_bytes": du_bytes(folder / "db"),
                 "uptime": uptime(), "reused": False})
    marker.write_text(json.dumps(info, indent=1))
    print(f"N={n:,}: filled in {info['fill_s']:.0f} s ({fill_s:.0f} s adding, {reopen_s:.0f} s reopening), "
          f"{info['count']:,} chunks, {info['files_count']:,} file records, "
          f"{info['store_bytes'] / 2**20:,.0f} MiB", flush=True)
    return info


def measure(n: int, mode: str, args, api, work: Path, corpus: Path, keep_pids: set[int]) -> dict:
    api_env = {k: v for k, v in os.environ.items() if not k.startswith(("CHROMA_", "OPENAI_"))}
    api_env.update({"OPENAI_API_KEY": api.api_key, "OPENAI_BASE_URL": api.base_url})
    if args.capacity_check:
        api_env["CAPACITY_CHECK"] = args.capacity_check
    dims = os.environ.get("EMBEDDING_DIMENSIONS")
    fill_dir = (args.keep or work) / (f"fill-{n}-d{dims}" if dims else f"fill-{n}")
    fill = make_fill(fill_dir, n, args, api_env)
    run = work / f"{mode}-{n}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    t = time.monotonic()
    shutil.copytree(fill_dir / "db", run / "db")
    copy_s = time.monotonic() - t
    (run / "db" / ".ingestion.lock").unlink(missing_ok=True)
    if args.hnsw:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--set-hnsw", str(run), args.hnsw], check=True)
    env = {**api_env, "TRANSCRIPTS_DIR": str(corpus), "CHECKPOINT_DIR": str(run / "ck"), "MAX_ITERATIONS": "0"}
    chroma = None
    if mode == "server":
        import server_mode

        chroma, port = server_mode.start_chroma(run / "db", log=run / "chroma", wait_s=300)
        keep_pids = keep_pids | {chroma.pid}
        chroma_cpu0 = cpu_seconds(chroma.pid)
        env.update({"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(port)})
    else:
        env["CHROMA_PATH"] = str(run / "db")
    result = {"n": n, "mode": mode, "fill": fill, "copy_s": copy_s, "uptime_before": uptime()}
    box = contextlib.ExitStack()
    try:
        group = None
        if args.memory_limit_mb:
            import capacity_plan

            group = box.enter_context(capacity_plan.memory_group(f"scale-bench-{os.getpid()}",
                                                                 args.memory_limit_mb * 2**20))
            if group is None:
                sys.exit("--memory-limit-mb: no memory group could be made here (root and a cgroup memory "
                         "controller are needed)")
            plan = measured(script("queue", "--dry-run"), env, run / "plan", keep_pids, args.tool_timeout, group)
            result["plan"] = {**plan, **read_plan((run / "plan.out").read_text())}
            print("  " + "\n  ".join(result["plan"]["lines"]), flush=True)
        result["queue"] = measured(script("queue"), env, run / "queue", keep_pids, args.tool_timeout)
        worker_argv = script("worker")
        if args.profile:
            worker_argv = [sys.executable, str(PROFILER), "--worker-profile", str(run / "store-calls.jsonl")]
        w = measured(worker_argv, env, run / "worker", keep_pids, args.tool_timeout, group)
        if group is not None:
            result["memory_group"] = {"limit_mb": args.memory_limit_mb, "kind": group.kind,
                                      "oom_kills": group.oom_kills(), "peak_charge_mb": (group.peak_bytes() or 0) / 2**20,
                                      "stat_after": group.stat()}
            print(f"  memory group {args.memory_limit_mb} MB ({group.kind}): oom_kill {group.oom_kills()}, "
                  f"peak charge {(group.peak_bytes() or 0) / 2**20:,.0f} MB", flush=True)
        out = (run / "worker.out").read_text()
        err = (run / "worker.err").read_text()
        if w["rc"] != 0 or f"{args.files} files run ({args.files} completed)" not in out:
            sys.exit(f"the worker at N={n} ({mode}) did not complete {args.files} files (exit {w['rc']}): see "
                     f"{run}/worker.out/.err")
        in_child = [float(s) for s in re.findall(r" completed .*?, ([\d.]+)s, peak RSS", err)]
        w["file_seconds_in_child"] = sorted(in_child)
        w["per_file_wall_s"] = w["wall_s"] / args.files
        done = [time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S"))
                for t in re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \w+ completed ", err, re.M)]
        # from the first file done to the last: without the run's opening (counts, the index loaded);
        # the log's timestamps are whole seconds, so take it from a run of 100 files or more
        w["per_file_after_first_s"] = (max(done) - min(done)) / (len(done) - 1) if len(done) > 1 else None
        w["per_file_cpu_s"] = w["cpu_s"] / args.files
        result["worker"] = w
        if "plan" in result:
            count = json.loads(subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reopen", str(run)],
                                              text=True, stdout=subprocess.PIPE).stdout.strip().splitlines()[-1])["count"] \
                if mode == "embedded" else None
            p = result["plan"]
            result["projection"] = {"vectors_planned": p["vectors"], "vectors_stored": count,
                                    "worker_mb_planned": p["worker_mb"], "worker_peak_mb": w["peak_rss_mb"],
                                    "vectors_error": (p["vectors"] / count - 1) if count else None,
                                    "worker_error": p["worker_mb"] / w["peak_rss_mb"] - 1 if p["worker_mb"] else None}
            print(f"  projection: {p['vectors']:,} vectors planned, {count or 0:,} stored; worker ~{p['worker_mb'] or 0:,.0f} "
                  f"MB planned, peak {w['peak_rss_mb']:,.0f} MB", flush=True)
        if chroma is not None:
            result["chroma_server_after_worker"] = {"cpu_s": cpu_seconds(chroma.pid) - chroma_cpu0,
                                                    "peak_rss_mb": status_kb(chroma.pid, "VmHWM") / 1024}
        result["store_bytes_after"] = du_bytes(run / "db") if mode == "embedded" else None
        for name, argv in () if args.skip_tools else (("status", script("worker", "--status")),
                           ("optimize_dry_run", script("optimize", "--dry-run")),
                           ("prune_dry_run", script("queue", "--prune", "--dry-run")),
                           ("query", script("query", "-k", "5", QUESTION))):
            r = measured(argv, env, run / name, keep_pids, args.tool_timeout)
            result[name] = r
            print(f"  N={n:,} {mode}: {name} {r['wall_s']:.1f} s (exit {r['rc']}, peak RSS {r['peak_rss_mb']:.0f} MB)",
                  flush=True)
        if chroma is not None:
            result["chroma_server"] = {"cpu_s": cpu_seconds(chroma.pid) - chroma_cpu0,
                                       "peak_rss_mb": status_kb(chroma.pid, "VmHWM") / 1024}
        if args.profile:
            import server_mode

            result["profile_table"] = server_mode.summarize_profile([run / "store-calls.jsonl"], args.files)
            print(result["profile_table"], flush=True)
    finally:
        if chroma is not None:
            stop(chroma)
        reap_orphans(keep_pids)
        box.close()
    result["uptime_after"] = uptime()
    print(f"N={n:,} {mode}: worker {w['wall_s']:.1f} s wall, {w['cpu_s']:.1f} s CPU, peak RSS "
          f"{w['peak_rss_mb']:.0f} MB (tree {w['tree_peak_rss_mb']:.0f} MB); {uptime()}", flush=True)
    if not args.keep_runs:
        shutil.rmtree(run / "db", ignore_errors=True)
    if not args.keep and not args.keep_runs:
        shutil.rmtree(fill_dir, ignore_errors=True)
    return result


def read_plan(out: str) -> dict:
    """The capacity plan's figures as generate_file_queue.py --dry-run prints them (ingestion/run/capacity.py)."""
    lines = [x for x in out.splitlines() if x.startswith(("capacity plan:", "  "))]
    vectors = re.search(r"store after the queue: ([\d,]+) vectors", out)
    worker = re.search(r"worker ~([\d,]+) MB", out)
    run = re.search(r"whole run ~([\d,]+) MB", out)
    num = (lambda m: int(m.group(1).replace(",", "")) if m else None)
    return {"lines": lines, "vectors": num(vectors), "worker_mb": num(worker), "run_mb": num(run),
            "fits": "does NOT fit" not in out}


def table(rows: list[dict]) -> str:
    base = {}
    for r in rows:
        if r["n"] == 0:
            base[r["mode"]] = r["worker"]
    head = ["| mode | N | fill s | per-file wall s (ratio) | after the first file (ratio) | per-file CPU s (ratio) "
            "| worker peak RSS MB | disk B/vector | status s | optimize s | prune dry-run s | query s "
            "| chroma server peak RSS MB | OOM kills (group limit) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        w, b = r["worker"], base.get(r["mode"])
        ratio = (lambda k: f" ({w[k] / b[k]:.2f}x)" if b and b.get(k) and w.get(k) else "")
        steady = f"{w['per_file_after_first_s']:.3f}" if w.get("per_file_after_first_s") else "–"
        disk = f"{r['fill']['store_bytes'] / r['n']:,.0f}" if r["n"] else "–"
        t = (lambda k: "–" if k not in r else f"{r[k]['wall_s']:.1f}" if r[k]["rc"] == 0 else f"{r[k]['wall_s']:.1f} ({r[k]['rc']})")
        server = f"{r['chroma_server']['peak_rss_mb']:,.0f}" if "chroma_server" in r else "–"
        group = r.get("memory_group")
        box = f"{group['oom_kills']} ({group['limit_mb']:,} MB)" if group else "–"
        mode = r["mode"] + (f" {r['fill']['dims']}d" if r["fill"].get("dims", 1536) != 1536 else "")
        head.append(f"| {mode} | {r['n']:,} | {r['fill']['fill_s']:.0f} | {w['per_file_wall_s']:.3f}{ratio('per_file_wall_s')} "
                    f"| {steady}{ratio('per_file_after_first_s')} | {w['per_file_cpu_s']:.3f}{ratio('per_file_cpu_s')} | {w['peak_rss_mb']:,.0f} | {disk} "
                    f"| {t('status')} | {t('optimize_dry_run')} | {t('prune_dry_run')} | {t('query')} | {server} | {box} |")
    return "\n".join(head)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,100000,250000,600000", help="store sizes N (default 0,100000,250000,600000)")
    ap.add_argument("--files", type=int, default=40, help="transcripts ingested at each N (default 40)")
    ap.add_argument("--size-kb", type=float, default=50, help="size of each (default 50 KB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency-ms", type=float, default=150, help="the API's latency a request (default 150)")
    ap.add_argument("--batch", type=int, default=5000, help="records a Chroma call when filling (default 5000)")
    ap.add_argument("--server", action="store_true", help="also each N through a `chroma run` server")
    ap.add_argument("--no-embedded", action="store_true", help="with --server: only the server runs")
    ap.add_argument("--profile", action="store_true", help="time the worker's store calls (bench/server_mode.py)")
    ap.add_argument("--capacity-check", choices=["refuse", "warn"],
                    help="CAPACITY_CHECK for the runs (default: unset, the project's default)")
    ap.add_argument("--memory-limit-mb", type=int,
                    help="run the plan and the worker in a cgroup memory group of this many MB (root)")
    ap.add_argument("--tool-timeout", type=float, default=1800, help="seconds any one measured command may take")
    ap.add_argument("--work", type=Path, help="folder for corpus, runs, logs (default: a new temp folder)")
    ap.add_argument("--keep", type=Path, help="keep the filled stores here (DIR/fill-N) and reuse them")
    ap.add_argument("--keep-runs", action="store_true", help="keep each run's store copy")
    ap.add_argument("--label", default="embedded", help="results go to bench/results/scale-LABEL.json")
    ap.add_argument("--skip-tools", action="store_true", help="measure the worker only, not the operator commands")
    ap.add_argument("--hnsw", help="change the copied store's HNSW settings before the run, e.g. "
                    "sync_threshold=100000,batch_size=1000 (those Chroma lets change)")
    ap.add_argument("--set-hnsw", nargs=2, metavar=("FOLDER", "SPEC"), help=argparse.SUPPRESS)
    ap.add_argument("--fill", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--reopen", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fill:
        print(json.dumps(fill_store(Path(args.fill[0]), int(args.fill[1]), args.batch, args.seed)), flush=True)
        return 0
    if args.set_hnsw:
        set_hnsw(Path(args.set_hnsw[0]), args.set_hnsw[1])
        return 0
    if args.reopen:
        print(json.dumps(reopen(args.reopen)), flush=True)
        return 0
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        sys.exit("set TIKTOKEN_CACHE_DIR (tiktoken cannot download offline), e.g. $PWD/.cache/tiktoken")
    import make_corpus
    from local_openai.testing import running_server

    subreaper = become_subreaper()
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    make_corpus.make_files(corpus, args.files, args.size_kb, args.seed)
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = ([] if args.no_embedded else ["embedded"]) + (["server"] if args.server else [])
    out_path = BENCH / "results" / f"scale-{args.label}.json"
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "argv": sys.argv,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_start": uptime(),
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "mem_total_kb": status_kb_meminfo()},
               "settings": {"files": args.files, "size_kb": args.size_kb, "latency_ms": args.latency_ms,
                            "seed": args.seed, "batch": args.batch, "hnsw": args.hnsw, "subreaper": subreaper,
                            "capacity_check": args.capacity_check or "(unset: project default)",
                            "project_settings_in_env": {k: v for k, v in os.environ.items() if k in PROJECT_KEYS}},
               "chromadb": chromadb_version(), "rows": []}
    with running_server(api_key=KEY, latency_ms=args.latency_ms) as api:
        keep_pids = {api.proc.pid}
        for n in sizes:
            for mode in modes:
                results["rows"].append(measure(n, mode, args, api, work, corpus, keep_pids))
                results["uptime_end"] = uptime()
                out_path.write_text(json.dumps(results, indent=1))
                print("\n" + table(results["rows"]) + "\n", flush=True)
    results["table"] = table(results["rows"])
    out_path.write_text(json.dumps(results, indent=1))
    print(f"{args.files} files of {args.size_kb:g} KB each, API {args.latency_ms:g} ms a request, worker defaults "
          f"(MAX_ITERATIONS=0); raw numbers: {out_path}")
    print(results["table"])
    return 0


PROJECT_KEYS = {"FILE_CONCURRENCY", "FILES_PER_CHILD", "EMBED_CONCURRENCY", "EMBED_BATCH_SIZE", "CHUNK_MAX_TOKENS",
                "CHUNK_OVERLAP_TOKENS", "TEXT_CLEANUP", "EMBEDDING_MODEL", "EMBEDDING_DIMENSIONS", "CAPACITY_CHECK",
                "MEMORY_LIMIT_MB", "CHILD_MAX_RSS_MB", "CHROMA_COLLECTION"}


def status_kb_meminfo() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1])


def chromadb_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import chromadb; print(chromadb.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
