#!/usr/bin/env python3
"""Split a transcript into parts at natural boundaries: STEM_01.txt, STEM_02.txt, ... under
$CHECKPOINT_DIR/splits/. Put together, the parts are exactly the original text.

If the file is pending or failed in the queue, its parts replace it there; chunks
from a part keep the original file as their source."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

from pathlib import Path  # noqa: E402

from ingestion.common import cli, settings  # noqa: E402
from ingestion.common.errors import ConfigError  # noqa: E402
from ingestion.run import splits  # noqa: E402
from ingestion.text import textfile  # noqa: E402
from ingestion.tracking import paths  # noqa: E402


def main() -> int:
    p = cli.parser("auto_chunker.py", __doc__)
    p.add_argument("file", help="the transcript to split")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--parts", type=int, help="number of parts (default: SPLIT_PARTS)")
    how.add_argument("--max-tokens", type=int, help="at most this many tokens per part instead")
    args = p.parse_args()
    cfg = settings.load()
    path = paths.canonical(args.file, cfg.allowed_roots)
    if not textfile.is_allowed(Path(path), cfg.allowed_roots):
        raise ConfigError(f"{path} is outside TRANSCRIPTS_DIR ({cfg.transcripts_dir}); not splitting it")
    if args.parts is not None and args.parts < 2 or args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--parts must be at least 2 and --max-tokens at least 1")
    parts, queued = splits.split_by_hand(cfg, path, args.parts, args.max_tokens)
    for part in parts:
        print(part)
    if queued:
        print(f"{len(parts)} parts replace {path} in the queue", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
