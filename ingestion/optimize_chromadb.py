#!/usr/bin/env python3
"""Deduplicate, validate and flag the stored chunks for RAG, without re-embedding anything."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

from ingestion.common import cli, progress, settings  # noqa: E402
from ingestion.storage import dedupe  # noqa: E402
from ingestion.storage.store import Store  # noqa: E402


def main() -> int:
    p = cli.parser("optimize_chromadb.py", __doc__ + "\n\n" + dedupe.__doc__.split("\n\n", 1)[1])
    p.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    p.add_argument("--list-invalid", type=int, default=20, metavar="N",
                   help="list at most N chunks whose metadata cannot be fixed (default 20)")
    args = p.parse_args()
    cfg = settings.load()
    with Store(cfg, check="ours", create=False) as store:
        if not store.count():
            print("optimize: the store is empty: run the worker first")
            return 0
        with progress.bar(store.count(), "checking chunks", "chunks") as advance:
            report = dedupe.optimize(store, dry_run=args.dry_run, progress=advance)
    for cid, problem in report.invalid[:args.list_invalid]:
        print(f"invalid {cid}: {problem}")
    print(report.line(args.dry_run))
    return 0


if __name__ == "__main__":
    cli.run(main)
