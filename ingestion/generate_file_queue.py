#!/usr/bin/env python3
"""Scan TRANSCRIPTS_DIR and merge it into the queue: new and changed files go to pending."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

from ingestion import cli, progress, scan, settings, status  # noqa: E402
from ingestion.runner import check_ready  # noqa: E402

SETTINGS = settings.STORE_SETTINGS + ["TRANSCRIPTS_DIR", "CHECKPOINT_DIR", "EMBEDDING_MODEL",
    "CHUNK_MAX_TOKENS", "CHUNK_OVERLAP_TOKENS", "LOG_LEVEL", "LOG_FORMAT"]


def main() -> int:
    p = cli.parser("generate_file_queue.py", __doc__ + "\n\nRunning it twice changes nothing. "
                   "Files being processed are left alone; finished files whose content is unchanged "
                   "are not queued again; files gone from disk are reported.", SETTINGS)
    p.add_argument("--transcripts-dir", help="overrides TRANSCRIPTS_DIR")
    p.add_argument("--retry-failed", action="store_true", help="move failed files back to pending")
    p.add_argument("--show-skipped", action="store_true", help="list skipped and vanished files")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing, call no API: count the tokens the pending files would send, and their cost")
    args = p.parse_args()
    cfg = settings.load({"TRANSCRIPTS_DIR": args.transcripts_dir})
    check_ready(cfg, need_key=False)
    summary, q = scan.refresh(cfg, retry_failed=args.retry_failed, dry_run=args.dry_run)
    if args.show_skipped:
        for path, why in summary.skipped:
            print(f"skipped {path!r}: {why}")
        for path in summary.gone:
            print(f"gone {path!r}")
    print(("dry run, nothing changed: would be " if args.dry_run else "") + summary.line(q))
    if args.dry_run:
        todo = q["pending"] + q["processing"]
        with progress.bar(len(todo), "counting tokens", "files") as advance:
            tokens, chunks, unreadable = scan.estimate_tokens(cfg, todo, advance)
        price = status.cost(tokens, cfg.embedding_model)
        money = f", {status.dollars(price)} at {cfg.embedding_model} prices" if price is not None else ""
        print(f"{tokens:,} tokens to embed in {chunks:,} chunks of {len(todo) - len(unreadable):,} files{money} "
              f"(CHUNK_MAX_TOKENS={cfg.chunk_max_tokens}, CHUNK_OVERLAP_TOKENS={cfg.chunk_overlap_tokens})")
        for path, why in unreadable:
            print(f"would fail {path!r}: {why}")
    return 0


if __name__ == "__main__":
    cli.run(main)
