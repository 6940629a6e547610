#!/usr/bin/env python3
"""Bookkeeping that does not grow with the queue: per-file cost with a small and a large queue.

Runs the worker (project defaults) on the same FILES small transcripts at zero latency,
once with a queue and checkpoint that already hold SMALL finished entries and once with
LARGE, and prints the wall time per file of each and their ratio.

    TIKTOKEN_CACHE_DIR=.cache/tiktoken .venv/bin/python bench/queue_scale.py --files 40
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from local_openai.testing import running_server  # noqa: E402

KEY = "sk-bench-0123456789abcdef"
TEXT = ("[00:00:{n:02d}] ALICE: Item {i}. The harbour budget was approved in March, {n} days early.\n"
        "BOB: Thanks. When does construction start on pier {i}?\n\n")


def run(root: Path, files: int, prefill: int, base_url: str) -> float:
    transcripts, ck = root / "t", root / "ck"
    transcripts.mkdir(parents=True)
    for i in range(files):
        (transcripts / f"f{i:03d}.txt").write_text("".join(TEXT.format(i=i, n=n % 60) for n in range(40)))
    env = {**os.environ, "TRANSCRIPTS_DIR": str(transcripts), "CHECKPOINT_DIR": str(ck),
           "CHROMA_PATH": str(root / "db"), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url}
    script = lambda name: [sys.executable, str(ROOT / "ingestion" / name)]  # noqa: E731
    subprocess.run(script("generate_file_queue.py"), env=env, check=True, capture_output=True)
    q = json.loads((ck / "file_queue.json").read_text())
    c = json.loads((ck / "checkpoint.json").read_text()) if (ck / "checkpoint.json").exists() else \
        {"processed_files": {}, "failed_files": {}}
    for i in range(prefill):  # finished files of an earlier run, as the scan would have recorded them
        p = f"/corpus/older/{i:05d}/transcript-{i}.txt"
        q["completed"].append(p)  # (the queue keeps no details of a finished file; the checkpoint does)
        c["processed_files"][p] = {"timestamp": "2026-01-01T00:00:00+0000", "status": "completed",
                                   "file_sha256": f"{i:064x}", "size": 61234, "mtime": 1.7e9 + i, "chunks": 30,
                                   "tokens": 12000, "embedded_tokens": 12000, "seconds": 1.0}
    (ck / "file_queue.json").write_text(json.dumps(q))
    (ck / "checkpoint.json").write_text(json.dumps(c))
    start = time.perf_counter()
    r = subprocess.run(script("process_queue_worker.py"), env={**env, "MAX_ITERATIONS": "0"}, capture_output=True,
                       text=True)
    wall = time.perf_counter() - start
    assert r.returncode == 0 and (files == 0 or f"{files} files run ({files} completed)" in r.stdout), \
        r.stdout + r.stderr
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with running_server(api_key=KEY) as server:
        results = {}
        for label, prefill in (("small", args.small), ("large", args.large)):
            per_file = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as e:
                    fixed = run(Path(e), 0, prefill, server.base_url)  # the run's start: imports, checks
                    per_file.append((run(Path(d), args.files, prefill, server.base_url) - fixed) / args.files)
            results[label] = sorted(per_file)[len(per_file) // 2]
            print(f"{prefill:>6} entries in the queue: {results[label] * 1000:.0f} ms a file beyond the run's "
                  f"fixed start ({args.files} files, median of {args.repeat})", flush=True)
    print(f"ratio large/small: {results['large'] / results['small']:.2f}")


if __name__ == "__main__":
    main()
