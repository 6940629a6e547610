"""One path is one file: paths made canonical where they enter, and which worker shard takes a file.

A file's path is its identity in the queue, the checkpoint and the store (`source`),
so every path that comes in (the scan, a path on the command line, a hand-edited
queue) is made canonical first: absolute, `.` and `..` resolved, a symlinked folder
replaced by its place under TRANSCRIPTS_DIR (or the splits folder). The file name
itself is kept: a symlinked *file* inside the folder is a transcript of its own
(its chunks reuse the target's vectors at no cost).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ingestion.common.hashing import shard_of
from ingestion.common.settings import Config


def canonical(path: str, roots: list[Path]) -> str:
    """path made canonical; roots are the configured folders, as written, under which it is expressed."""
    full = os.path.join(os.getcwd(), path)
    parent = os.path.realpath(os.path.dirname(full))
    name = os.path.basename(full)
    for root in roots:
        real_root = os.path.realpath(root)
        if parent == real_root or parent.startswith(real_root.rstrip("/") + "/"):
            rel = os.path.relpath(parent, real_root)
            return os.path.normpath(os.path.join(str(root), rel, name))
    return os.path.join(parent, name)


def looks_canonical(path: str) -> bool:
    """Cheap check (no file system access): absolute and with nothing to resolve lexically."""
    return os.path.isabs(path) and os.path.normpath(path) == path


def shard_filter(cfg: Config) -> Callable[[str], bool]:
    """WORKER_SHARD=i/N: accept only paths whose hash falls in shard i (0-based) of N.

    The hash is of the path relative to TRANSCRIPTS_DIR, so machines that mount the
    corpus at different places still agree on who takes which file."""
    if cfg.worker_shard is None:
        return lambda p: True
    i, n = cfg.worker_shard
    return lambda path: shard_of(os.path.relpath(path, cfg.transcripts_dir), n) == i
