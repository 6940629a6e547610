#!/usr/bin/env python3
"""Work through the queue, each file in its own subprocess, MAX_ITERATIONS files a run."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

import json  # noqa: E402

from ingestion import cli, runner, settings, status, worker  # noqa: E402

SETTINGS = settings.STORE_SETTINGS + ["TRANSCRIPTS_DIR", "CHECKPOINT_DIR", "OPENAI_API_KEY",
    "OPENAI_BASE_URL", "EMBEDDING_MODEL", "MAX_ITERATIONS", "FILES_PER_CHILD", "FILE_CONCURRENCY", "WORKER_SHARD", "LEASE_SECONDS",
    "MEMORY_LIMIT_MB", "SPLIT_PARTS", "SPLIT_MIN_BYTES", "LOG_LEVEL", "LOG_FORMAT"]


def main() -> int:
    p = cli.parser("process_queue_worker.py", __doc__ + "\n\n" + worker.__doc__.split("\n\n", 1)[1],
                   SETTINGS)
    p.add_argument("--max-iterations", type=int, help="overrides MAX_ITERATIONS (0: until the queue is empty)")
    p.add_argument("--status", action="store_true",
                   help="print the queue, the store, tokens and cost, throughput, ETA and failures; process nothing")
    p.add_argument("--json", action="store_true", help="with --status: one JSON object, for machines")
    args = p.parse_args()
    cfg = settings.load({"MAX_ITERATIONS": args.max_iterations})
    if args.status:
        info = status.collect(cfg)
        print(json.dumps(info, indent=1) if args.json else status.render(info))
        return 0
    return worker.run(cfg, cfg.max_iterations, runner.StopFlag().install())


if __name__ == "__main__":
    cli.run(main)
