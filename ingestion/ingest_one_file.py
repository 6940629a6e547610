#!/usr/bin/env python3
"""Ingest one file: claim the first pending file (or PATH), chunk, embed, store, record."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

import json  # noqa: E402

from ingestion.common import cli, settings  # noqa: E402
from ingestion.run import children, job  # noqa: E402


def main() -> int:
    p = cli.parser("ingest_one_file.py", __doc__ + "\n\nAn empty queue is not an error: it says so and "
                   "exits 0. With no queue yet, it builds one first. Chunks already stored are not "
                   "embedded again, so a resumed file costs nothing twice.")
    p.add_argument("path", nargs="?", help="a file under TRANSCRIPTS_DIR (default: the first pending file)")
    p.add_argument("--child", type=int, metavar="WORKER_PID", help=argparse_hidden())
    p.add_argument("--budget", type=int, default=1, help=argparse_hidden())
    p.add_argument("--held", default="[]", help=argparse_hidden())
    args = p.parse_args()
    if args.child:  # the worker's child, where the platform cannot fork (internal)
        def report(code: int, path: str, why: str) -> None:
            print("@@done " + json.dumps([code, path, why]), flush=True)
        return children.child_main(args.child, args.budget, json.loads(args.held), report)
    cfg = settings.load()
    return job.ingest_path(cfg, args.path, job.StopFlag().install())


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    cli.run(main)
