#!/usr/bin/env python3
"""Ingest one file: claim the first pending file (or PATH), chunk, embed, store, record."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

from ingestion import cli, runner, settings  # noqa: E402

SETTINGS = settings.STORE_SETTINGS + ["TRANSCRIPTS_DIR", "CHECKPOINT_DIR", "OPENAI_API_KEY",
    "OPENAI_BASE_URL", "OPENAI_MAX_RETRIES", "OPENAI_TIMEOUT", "EMBEDDING_MODEL", "EMBEDDING_DIMENSIONS",
    "CHUNK_MAX_TOKENS", "CHUNK_OVERLAP_TOKENS", "EMBED_BATCH_SIZE", "EMBED_CONCURRENCY", "CHILD_MAX_RSS_MB", "MAX_ATTEMPTS",
    "MEMORY_LIMIT_MB", "SPLIT_PARTS", "SPLIT_MIN_BYTES", "LOG_LEVEL", "LOG_FORMAT"]


def main() -> int:
    p = cli.parser("ingest_one_file.py", __doc__ + "\n\nAn empty queue is not an error: it says so and "
                   "exits 0. Chunks already stored are not embedded again, so a resumed file costs "
                   "nothing twice.", SETTINGS)
    p.add_argument("path", nargs="?", help="a file under TRANSCRIPTS_DIR (default: the first pending file)")
    p.add_argument("--claimed", action="store_true",
                   help="PATH was already claimed by process_queue_worker.py (internal)")
    p.add_argument("--more", type=int, default=0, metavar="N",
                   help="with --claimed: then claim and ingest up to N more files in this process (internal)")
    args = p.parse_args()
    if args.claimed and not args.path:
        p.error("--claimed needs PATH")
    cfg = settings.load()
    stop = runner.StopFlag().install()
    if args.claimed and args.more > 0:
        return runner.ingest_several(cfg, args.path, args.more, stop)
    return runner.ingest_one(cfg, args.path, claimed=args.claimed, stop=stop)


if __name__ == "__main__":
    cli.run(main)
