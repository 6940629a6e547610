#!/usr/bin/env python3
"""Server mode against the embedded store: the same files, the same API, the worker on its defaults.

    TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken .venv/bin/python bench/server_mode.py \\
        --files 40 --size-kb 50 --latency-ms 150 --repeat 3 [--profile]

What it does: builds a corpus (bench/make_corpus.py), starts the local OpenAI-compatible server
(local_openai/, --latency-ms a request) and one `chroma run` server (the topology render.yaml runs),
then, --repeat times, runs `process_queue_worker.py` with MAX_ITERATIONS=0 (which builds the queue
itself, as the cron job does) into a fresh embedded store, and into a fresh collection of the Chroma
server, back to back (the order alternates from one repeat to the next, so that a busy moment of the
machine does not always fall on the same side). Prints each pair's wall times, their medians, and
server / embedded.

--profile: the worker of each run records every store call it makes (the store is the
worker's: its children reach it through lent_store), and prints, per file, the calls' count and
time: the operation a child asked for (claim, add, ...) with the time it waited for the worker's store
to be free, the Store method, and the Chroma client calls under them (HTTP calls in server mode).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chroma(data: Path, log: Path | None = None, wait_s: float = 60) -> tuple[subprocess.Popen, int]:
    """A Chroma server on a free loopback port, once it answers, started as render.yaml starts it:
    deploy/chroma_server.sh, `chroma run` with the SQLite set-up of storage/chroma_sqlite.py beside it.
    log: its output goes to LOG.out (else nowhere); wait_s: how long a big store may take to load."""
    port = free_port()
    out = open(f"{log}.out", "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([str(ROOT / "deploy" / "chroma_server.sh"), "--path", str(data), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("chroma run did not start" + (f": see {log}.out" if log else ""))
            time.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    """A live process's peak RSS (VmHWM), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_worker(env: dict, log_prefix: Path, profile: Path | None = None) -> float:
    """One worker run to the end of the queue; its wall seconds (its output in log_prefix.out/.err)."""
    argv = [sys.executable, str(ROOT / "ingestion" / "process_queue_worker.py")]
    if profile is not None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker-profile", str(profile)]
    started = time.monotonic()
    with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
        rc = subprocess.run(argv, env=env, stdout=out, stderr=err, cwd=log_prefix.parent).returncode
    seconds = time.monotonic() - started
    if rc != 0:
        sys.exit(f"the worker failed (exit {rc}): see {log_prefix}.err")
    return seconds


# ---- --profile: the worker, with its store calls timed ----------------------------------------
def profiled_worker(out: Path) -> None:
    """Run process_queue_worker.py's main in this process, recording each store call to out (JSON lines):
    op (what a child asked: the time includes waiting for the store), store (the Store method itself),
    http (a Chroma client call under it)."""
    import threading

    from ingestion.storage import lent_store, store

    lock = threading.Lock()
    records: list[dict] = []

    def timed(kind: str, name_of, fn):
        def wrapper(*args, **kwargs):
            t = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    records.append({"kind": kind, "name": name_of(args), "start": t,
                                    "seconds": time.monotonic() - t})
        return wrapper

    shared_call = lent_store.Shared.call
    lent_store.Shared.call = timed("op", lambda a: a[2], shared_call)
    for name in [n for n in lent_store.CALLS if hasattr(store.Store, n)]:
        setattr(store.Store, name, timed("store", lambda a, n=name: n, getattr(store.Store, name)))
    store_call = store.Store.call
    store.Store.call = timed("http", lambda a: getattr(a[1], "__name__", "?"), store_call)
    sys.argv = ["process_queue_worker.py"]
    try:
        from ingestion.common import cli, settings
        from ingestion.run import job, worker

        cli.setup_logging()
        cfg = settings.load()
        code = worker.run(cfg, cfg.max_iterations, job.StopFlag().install())
    finally:
        out.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    sys.exit(code)


def summarize_profile(paths: list[Path], files: int) -> str:
    """Per file, each kind and name of call: count and seconds (means over the profiled runs)."""
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0])
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                t = totals[(r["kind"], r["name"])]
                t[0] += 1
                t[1] += r["seconds"]
    n = files * len(paths)
    lines = ["| kind | call | calls a file | ms a call | s a file |", "|---|---|---|---|---|"]
    for (kind, name), (count, seconds) in sorted(totals.items(), key=lambda kv: (kv[0][0], -kv[1][1])):
        lines.append(f"| {kind} | {name} | {count / n:.2f} | {1000 * seconds / count:.1f} | {seconds / n:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40, help="transcripts (default 40)")
    ap.add_argument("--size-kb", type=float, default=50, help="size of each (default 50 KB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency-ms", type=float, default=150, help="the API's latency a request (default 150)")
    ap.add_argument("--latency-per-1k-ms", type=float, default=0,
                    help="extra latency per 1000 input tokens (default 0)")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (default 3)")
    ap.add_argument("--profile", action="store_true", help="time every store call of the server runs")
    ap.add_argument("--keep", type=Path, help="keep the runs' folders (logs, stores) here")
    ap.add_argument("--worker-profile", type=Path, help=argparse.SUPPRESS)  # (this script as the profiled worker)
    args = ap.parse_args(argv)
    if args.worker_profile:
        profiled_worker(args.worker_profile)
    import make_corpus

    from local_openai.testing import running_server

    work = args.keep or Path(tempfile.mkdtemp(prefix="server-mode-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if not corpus.exists():
        make_corpus.make_files(corpus, args.files, args.size_kb, args.seed)
    chroma, port = start_chroma(work / "chroma-server")
    times: dict[str, list[float]] = {"embedded": [], "server": []}
    profiles: dict[str, list[Path]] = {"embedded": [], "server": []}
    try:
        with running_server(api_key="sk-bench-000000000000", latency_ms=args.latency_ms,
                            latency_per_1k_ms=args.latency_per_1k_ms) as api:
            base = {k: v for k, v in os.environ.items() if not k.startswith(("CHROMA_", "OPENAI_"))}
            base.update({"TRANSCRIPTS_DIR": str(corpus), "OPENAI_API_KEY": api.api_key,
                         "OPENAI_BASE_URL": api.base_url, "MAX_ITERATIONS": "0"})
            for n in range(args.repeat):
                order = ("embedded", "server") if n % 2 == 0 else ("server", "embedded")
                for mode in order:
                    run = work / f"{mode}-{n}"
                    run.mkdir()
                    env = {**base, "CHECKPOINT_DIR": str(run / "checkpoints"), "CHROMA_PATH": str(run / "chroma")}
                    if mode == "server":
                        env.update({"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(port),
                                    "CHROMA_COLLECTION": f"bench{n}"})
                    profile = run / "store-calls.jsonl" if args.profile else None
                    seconds = run_worker(env, run / "worker", profile)
                    times[mode].append(seconds)
                    if profile:
                        profiles[mode].append(profile)
                    print(f"repeat {n + 1}: {mode:8s} {seconds:6.2f} s", flush=True)
        chroma_peak = peak_rss_mb(chroma.pid)
    finally:
        chroma.send_signal(signal.SIGTERM)
        try:
            chroma.wait(timeout=20)
        except subprocess.TimeoutExpired:
            chroma.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    emb, srv = statistics.median(times["embedded"]), statistics.median(times["server"])
    pairs = [s / e for e, s in zip(times["embedded"], times["server"])]
    print(f"\n{args.files} files of {args.size_kb:g} KB, API {args.latency_ms:g} ms a request, worker defaults, "
          f"{args.repeat} pairs")
    print(f"embedded: {', '.join(f'{t:.2f}' for t in times['embedded'])} s (median {emb:.2f})")
    print(f"server:   {', '.join(f'{t:.2f}' for t in times['server'])} s (median {srv:.2f})")
    print(f"server / embedded: {srv / emb:.2f} (medians); pair by pair {', '.join(f'{p:.2f}' for p in pairs)}; "
          f"{(srv - emb) / args.files:+.3f} s a file")
    print(f"Chroma server peak RSS: {chroma_peak:.0f} MB")
    for mode, paths in profiles.items():
        if paths:
            print(f"\nstore calls, {mode} (op: a child's call as the worker served it, its wait for the store "
                  "included; store: the Store method; http: a Chroma call)\n")
            print(summarize_profile(paths, args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
