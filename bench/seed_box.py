#!/usr/bin/env python3
"""The seed's corpus in the seed's machine: 10,000 real-size transcripts on the defaults, in a 4 GB box.

    TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken .venv/bin/python bench/seed_box.py --files 10000 --memory-limit-mb 4096

FILES transcripts are made as hard links to the two real ones in tests/fixtures/real (no disk: ~234 KB
each, ~62 chunks), queued by generate_file_queue.py; then process_queue_worker.py runs on its defaults
(an empty embedded store, 1536 dimensions) inside a cgroup memory group of M MB (bench/capacity_plan.py's;
root, cgroup v1 or v2), against the project's local API server. Checked: the run is refused before
anything is claimed or paid (exit 2, one line naming the files that fit and the ways out), the API saw
no request, the queue is as it was, no OOM kill.

Then the plan is followed (--follow DIMS, default 512, one of the EMBEDDING_DIMENSIONS the refusal
offers): the worker runs again in the same box with EMBEDDING_DIMENSIONS=DIMS and MAX_ITERATIONS=
--follow-files. The plan is checked for the whole queue before the first claim, so a start is the plan
accepting the way out for all FILES; that those few files are ingested without an OOM kill is checked
too. Ingesting the store the seed ends with at DIMS inside the box (its last files into ~620,000
vectors) is bench/scale.py with --memory-limit-mb (bench/RESULTS.md, "Scale").
Prints what it saw; exit 0 when every check held, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from capacity_plan import memory_group, script, tool_env  # noqa: E402

from local_openai.testing import running_server  # noqa: E402

REAL = sorted((ROOT / "tests" / "fixtures" / "real").glob("*.txt"))
KEY = "sk-bench-seed-box-000000"


def make_links(folder: Path, files: int) -> None:
    for i in range(files):
        sub = folder / f"{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        link = sub / f"transcript_{i:05d}.txt"
        if not link.exists():
            os.link(REAL[i % len(REAL)], link)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="transcripts (default 10,000)")
    ap.add_argument("--memory-limit-mb", type=int, default=4096, help="the box (default 4096)")
    ap.add_argument("--follow", type=int, default=512, help="EMBEDDING_DIMENSIONS to follow the plan with (0: none)")
    ap.add_argument("--follow-files", type=int, default=4, help="files the followed run ingests (default 4)")
    ap.add_argument("--work", type=Path, help="folder (default: a new temp folder)")
    args = ap.parse_args(argv)
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        sys.exit("set TIKTOKEN_CACHE_DIR (tiktoken cannot download offline), e.g. $PWD/.cache/tiktoken")
    work = args.work or Path(tempfile.mkdtemp(prefix="seed-box-"))
    corpus = work / "corpus"
    make_links(corpus, args.files)
    worker = script("process_queue_worker.py")
    queue_file = work / "ck" / "file_queue.json"
    checks: list[tuple[str, bool]] = []
    result: dict = {"files": args.files, "limit_mb": args.memory_limit_mb, "corpus_bytes": sum(
        p.stat().st_size for p in corpus.rglob("*.txt"))}
    with running_server(api_key=KEY) as api:
        env = tool_env(api, TRANSCRIPTS_DIR=str(corpus), CHECKPOINT_DIR=str(work / "ck"), CHROMA_PATH=str(work / "db"),
                       MAX_ITERATIONS="0")
        with memory_group(f"seed-box-{os.getpid()}", args.memory_limit_mb * 2**20) as group:
            if group is None:
                sys.exit("no cgroup memory group can be made here (root and a memory controller are needed)")
            t = time.monotonic()
            queued = group.run(script("generate_file_queue.py"), env=env)
            result["queue_s"] = time.monotonic() - t
            checks.append(("queue made", queued.returncode == 0))
            before = queue_file.read_text()
            t = time.monotonic()
            out = group.run(worker, env=env)
            result["refusal_s"] = time.monotonic() - t
            lines = out.stderr.strip().splitlines()
            result["refusal"] = {"rc": out.returncode, "stderr": out.stderr.strip()}
            print(f"worker on the defaults, {args.files:,} files, {args.memory_limit_mb:,} MB box: exit "
                  f"{out.returncode} in {result['refusal_s']:.1f} s\n  {out.stderr.strip()}", flush=True)
            checks += [("refused: exit 2", out.returncode == 2),
                       ("one line", len(lines) == 1 and lines[0].startswith("error: capacity:")),
                       ("nothing paid", api.stats()["requests"] == 0),
                       ("queue unchanged", queue_file.read_text() == before),
                       ("no OOM kill", group.oom_kills() == 0)]
            offered = re.search(r"EMBEDDING_DIMENSIONS=([^;]*)", out.stderr)
            result["dimensions_offered"] = offered.group(1) if offered else None
            if args.follow:
                checks.append((f"{args.follow} dimensions offered", bool(offered) and
                               f"{args.follow} (run" in offered.group(1)))
                follow = {**env, "EMBEDDING_DIMENSIONS": str(args.follow), "MAX_ITERATIONS": str(args.follow_files)}
                t = time.monotonic()
                out = group.run(worker, env=follow)
                result["followed"] = {"dims": args.follow, "rc": out.returncode, "s": time.monotonic() - t,
                                      "stderr_tail": out.stderr.strip().splitlines()[-3:]}
                q = json.loads(queue_file.read_text())
                print(f"worker with EMBEDDING_DIMENSIONS={args.follow}, {args.follow_files} files: exit {out.returncode}; "
                      f"completed {len(q['completed'])}, pending {len(q['pending'])}", flush=True)
                checks += [(f"EMBEDDING_DIMENSIONS={args.follow}: the plan lets it start", out.returncode == 0
                            and "error: capacity" not in out.stderr),
                           (f"{args.follow_files} files completed", len(q["completed"]) == args.follow_files),
                           ("no OOM kill", group.oom_kills() == 0)]
            result["oom_kills"] = group.oom_kills()
    result["checks"] = checks
    (BENCH / "results" / "seed-box.json").write_text(json.dumps(result, indent=1))
    for name, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
