#!/usr/bin/env python3
"""Work through the queue, each file in its own process, MAX_ITERATIONS files a run."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

import json  # noqa: E402

from ingestion.common import cli, settings  # noqa: E402
from ingestion.run import job, worker  # noqa: E402
from ingestion.tracking import status  # noqa: E402


def main() -> int:
    p = cli.parser("process_queue_worker.py", __doc__ + "\n\n" + worker.__doc__.split("\n\n", 1)[1])
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
    return worker.run(cfg, cfg.max_iterations, job.StopFlag().install())


if __name__ == "__main__":
    cli.run(main)
