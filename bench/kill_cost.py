#!/usr/bin/env python3
"""What a kill -9 of a worker's child costs, and what group commit costs: a clean run, then one with kills.

    .venv/bin/python bench/kill_cost.py [--files 36] [--size-kb 150] [--kills 4] [--latency-ms 200]
                                        [--jitter 0.4] [--project DIR] [--clean-only]

On a corpus from bench/make_corpus.py, against the local OpenAI-compatible server:
1. a clean run (the worker until the queue is empty): wall time, requests, chunks and
   tokens sent, the store's upserts (Chroma's `Collection.upsert` on the chunks collection,
   counted in the worker, which holds the embedded store), chunks and tokens stored;
2. unless --clean-only, the same corpus in a fresh folder with --kills kill -9s of a child,
   each at a random moment of a file not killed before (a second kill of a file would split
   it), then the worker again until the queue is empty. Chunks paid twice per kill are the
   chunks sent beyond the clean run's, over the kills; tokens sent / stored is printed for both.

--project runs another copy of the code (e.g. an older commit unpacked with `git archive`) on the
same corpus and server, to compare before and after. The project's settings found in the
environment (EMBED_BATCH_SIZE, EMBED_CONCURRENCY, FILE_CONCURRENCY, ...) reach the worker.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import make_corpus  # noqa: E402

from local_openai.testing import running_server  # noqa: E402

KEY = "sk-bench-kill-cost-0000000000000000"
# the worker, with Chroma's upsert counted per collection (written to $UPSERTS_OUT at exit)
COUNTED_WORKER = """
import atexit, json, os, runpy, sys, threading
from chromadb.api.models.Collection import Collection
counts, lock, upsert = {}, threading.Lock(), Collection.upsert
def counted(self, *a, **k):
    with lock:
        counts[self.name] = counts.get(self.name, 0) + 1
    return upsert(self, *a, **k)
Collection.upsert = counted
atexit.register(lambda: open(os.environ["UPSERTS_OUT"], "w").write(json.dumps(counts)))
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def env_for(run: Path, corpus: Path, api) -> dict:
    return {**os.environ, "TRANSCRIPTS_DIR": str(corpus), "CHECKPOINT_DIR": str(run / "checkpoints"),
            "CHROMA_PATH": str(run / "chroma"), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": api.base_url,
            "MAX_ITERATIONS": "0", "CHUNK_MAX_TOKENS": "500", "CHUNK_OVERLAP_TOKENS": "50",
            "LEASE_SECONDS": "600", "UPSERTS_OUT": str(run / "upserts.json")}


def worker(project: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COUNTED_WORKER, str(project / "ingestion" / "process_queue_worker.py")],
                            env=env, cwd=env["CHECKPOINT_DIR"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # (not from this checkout: the fork server would import its code first)


def finish(w: subprocess.Popen, run: Path, upserts: dict) -> None:
    out, err = w.communicate(timeout=3600)
    (run / "worker.log").open("a").write(out + err)
    if w.returncode != 0:
        sys.exit(f"worker failed ({w.returncode}): {err[-2000:]}")
    for name, n in json.loads((run / "upserts.json").read_text()).items():
        upserts[name] = upserts.get(name, 0) + n


def stored(run: Path) -> tuple[int, int]:
    """(chunks, tokens) in the store."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    client = chromadb.PersistentClient(path=str(run / "chroma"))
    metas = client.get_collection("transcripts").get(include=["metadatas"])["metadatas"]
    SharedSystemClient.clear_system_cache()
    return len(metas), sum(m["token_count"] for m in metas)


def processing(run: Path) -> dict[str, int]:
    """Files in processing -> their child's pid."""
    try:
        q = json.loads((run / "checkpoints" / "file_queue.json").read_text())
    except (OSError, ValueError):
        return {}
    return {p: (q["files"].get(p, {}).get("lease") or {}).get("child_pid") for p in q["processing"]}


def one_run(project: Path, corpus: Path, api, run: Path, kills: int, rnd: random.Random, max_wait: float,
            jitter: float) -> dict:
    env = env_for(run, corpus, api)
    Path(env["CHECKPOINT_DIR"]).mkdir(parents=True)
    subprocess.run([sys.executable, str(project / "ingestion" / "generate_file_queue.py")], env=env, check=True,
                   capture_output=True, cwd=run)
    api.reset()
    if jitter:  # (the same draws for the clean run and the one with kills)
        draws = random.Random(0)
        api.set_faults(fail_next=[{"action": "hang", "seconds": draws.uniform(0, jitter)} for _ in range(20_000)])
    upserts: dict = {}
    started = time.monotonic()
    w = worker(project, env)
    killed, in_flight = [], []
    while len(killed) < kills and w.poll() is None:
        files = {p: pid for p, pid in processing(run).items() if pid and p not in killed}
        if not files:
            time.sleep(0.02)
            continue
        path, pid = rnd.choice(sorted(files.items()))
        deadline = time.monotonic() + rnd.uniform(0.2, max_wait)
        while time.monotonic() < deadline and processing(run).get(path) == pid:
            time.sleep(0.02)
        if processing(run).get(path) != pid:
            continue  # done before its moment came: another one
        try:
            in_flight.append(api.stats()["in_flight"])
            os.kill(pid, signal.SIGKILL)
            killed.append(path)
        except ProcessLookupError:
            in_flight.pop()
    finish(w, run, upserts)
    for _ in range(3):  # the killed files, if the worker ended before requeueing them
        q = json.loads((run / "checkpoints" / "file_queue.json").read_text())
        if q["failed"]:
            sys.exit(f"files failed (see {run}/worker.log): {q['failed'][:3]}")
        if not (q["pending"] or q["processing"]):
            break
        finish(worker(project, env), run, upserts)
    seconds = time.monotonic() - started
    s = api.stats()
    chunks, tokens = stored(run)
    return {"seconds": round(seconds, 1), "requests": s["ok_requests"], "inputs": s["inputs"], "tokens": s["tokens"],
            "stored_chunks": chunks, "stored_tokens": tokens, "upserts": upserts.get("transcripts", 0),
            "kills": len(killed), "requests_in_flight_at_kills": in_flight}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=ROOT, help="the code to run (default: this checkout)")
    ap.add_argument("--files", type=int, default=36)
    ap.add_argument("--size-kb", type=float, default=150, help="size of each file (150 KB: ~150 chunks)")
    ap.add_argument("--seed", type=int, default=1, help="the corpus's and the kill moments' seed")
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--latency-ms", type=int, default=200, help="the server's latency per request")
    ap.add_argument("--per-1k-ms", type=int, default=0, help="the server's latency per 1,000 tokens")
    ap.add_argument("--jitter", type=float, default=0.0, help="each request waits 0 to this many s more (random)")
    ap.add_argument("--max-wait", type=float, default=6.0, help="a kill comes 0.2 to this many s after a file's start")
    ap.add_argument("--clean-only", action="store_true")
    args = ap.parse_args()
    corpus = BENCH / "work" / f"kill-corpus-{args.files}x{args.size_kb:g}kb-s{args.seed}"
    if not corpus.exists():
        make_corpus.make_files(corpus, args.files, args.size_kb, args.seed)
    rnd = random.Random(args.seed)
    out = {"project": str(args.project), "files": args.files, "size_kb": args.size_kb}
    with running_server(api_key=KEY) as api, tempfile.TemporaryDirectory(prefix="kill-cost-") as tmp:
        tmp = os.environ.get("KILL_COST_KEEP") or tmp
        api.set_faults(latency_ms=args.latency_ms, latency_per_1k_tokens_ms=args.per_1k_ms)
        out["clean"] = clean = one_run(args.project, corpus, api, Path(tmp) / "clean", 0, rnd, args.max_wait,
                                         args.jitter)
        print("clean:", json.dumps(clean), flush=True)
        if not args.clean_only:
            out["kills"] = k = one_run(args.project, corpus, api, Path(tmp) / "kills", args.kills, rnd,
                                       args.max_wait, args.jitter)
            print("kills:", json.dumps(k), flush=True)
            if k["kills"]:
                out["paid_twice_per_kill"] = round((k["inputs"] - clean["inputs"]) / k["kills"], 1)
    for name in ("clean", "kills"):
        if name in out:
            out[f"{name}_tokens_sent_per_stored"] = round(out[name]["tokens"] / out[name]["stored_tokens"], 3)
    print(json.dumps({k: v for k, v in out.items() if k not in ("clean", "kills")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
