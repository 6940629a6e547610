#!/usr/bin/env python3
"""Scan TRANSCRIPTS_DIR and merge it into the queue: new and changed files go to pending."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

from ingestion.common import cli, progress, settings  # noqa: E402
from ingestion.openai_api import models  # noqa: E402
from ingestion.run import capacity  # noqa: E402
from ingestion.run.preflight import check_ready  # noqa: E402
from ingestion.tracking import file_queue, scan, state, status  # noqa: E402


def main() -> int:
    p = cli.parser("generate_file_queue.py", __doc__ + "\n\nRunning it twice changes nothing. "
                   "Files being processed are left alone; finished files whose content is unchanged "
                   "are not queued again; files gone from disk are reported (--prune removes them).")
    p.add_argument("--transcripts-dir", help="overrides TRANSCRIPTS_DIR")
    p.add_argument("--retry-failed", action="store_true", help="move failed files back to pending")
    p.add_argument("--show-skipped", action="store_true", help="list skipped and vanished files")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing, call no API: count the tokens the pending files would send, their "
                        "cost, and the capacity plan (the store after the queue: vectors, memory, disk, against "
                        "this machine's); with --prune: list what would be removed")
    p.add_argument("--prune", action="store_true",
                   help="remove the chunks, done-records and queue entries of transcripts deleted from the folder")
    p.add_argument("--force", action="store_true",
                   help="with --prune: even when every known transcript is gone (an empty folder)")
    args = p.parse_args()
    cfg = settings.load({"TRANSCRIPTS_DIR": args.transcripts_dir})
    check_ready(cfg, need_key=False)
    if not args.dry_run:
        scan.set_aside_if_other(cfg)
    if args.prune:
        pruned = scan.prune(cfg, dry_run=args.dry_run, force=args.force)
        verb = "would remove" if args.dry_run else "removed"
        for path in pruned.files:
            print(f"{verb} {path}")
        print(f"prune: {verb} {len(pruned.files)} files gone from disk and {pruned.chunks} of their chunks"
              + (f"; {pruned.handed_over} chunks kept for the other sources they stand for"
                 if pruned.handed_over else ""))
        return 0
    summary, q = scan.refresh(cfg, retry_failed=args.retry_failed, dry_run=args.dry_run)
    if args.show_skipped:
        for path, why in summary.skipped:
            print(f"skipped {path!r}: {why}")
        for path in summary.gone:
            print(f"gone {path!r}")
    print(("dry run, nothing changed: would be " if args.dry_run else "") + summary.line(q))
    if args.dry_run:
        todo = file_queue.paths(q, file_queue.PENDING) + file_queue.paths(q, file_queue.PROCESSING)
        with progress.bar(len(todo), "counting tokens", "files") as advance:
            tokens, chunks, saved, unreadable = scan.estimate_tokens(cfg, todo, advance)
        price = models.cost(tokens, cfg.embedding_model)
        money = f", {status.dollars(price)} at {cfg.embedding_model} prices" if price is not None else ""
        print(f"{tokens:,} tokens to embed in {chunks:,} chunks of {len(todo) - len(unreadable):,} files{money} "
              f"(CHUNK_MAX_TOKENS={cfg.chunk_max_tokens}, CHUNK_OVERLAP_TOKENS={cfg.chunk_overlap_tokens})")
        if saved:
            print(f"text cleanup saved {saved:,} tokens (page furniture and word indexes; TEXT_CLEANUP=off keeps them)")
        for path, why in unreadable:
            print(f"would fail {path!r}: {why}")
        _, c = state.read(cfg)
        plan = capacity.plan(cfg, q, c, capacity.stored_vectors(cfg, c), counted_chunks=chunks)
        for line in plan.lines() if plan is not None else []:
            print(line)
    return 0


if __name__ == "__main__":
    cli.run(main)
