"""Changing the queue and the checkpoint together, under one lock, atomically.

    with state.transaction(cfg) as (queue, checkpoint):
        file_queue.complete(queue, path)

loads both files under `$CHECKPOINT_DIR/.state.lock`, and writes back each one that
changed when the block ends without an error. Two processes never lose each
other's updates; a kill leaves the old or the new version of each file.
"""
from __future__ import annotations

import contextlib
import copy
import json
from typing import Iterator

from ingestion import checkpoint, file_queue
from ingestion.settings import Config
from ingestion.statefile import locked, write_atomic


def _dump(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False)


@contextlib.contextmanager
def transaction(cfg: Config) -> Iterator[tuple[dict, dict]]:
    with locked(cfg.checkpoint_dir / ".state.lock"):
        queue = file_queue.load(cfg.queue_path)
        ckpt = checkpoint.load(cfg.checkpoint_path)
        before_q, before_c = copy.deepcopy(queue), copy.deepcopy(ckpt)
        yield queue, ckpt
        # checkpoint first: a kill between the two writes leaves a finished file
        # in "processing", which is requeued and then found already stored.
        if ckpt != before_c or not cfg.checkpoint_path.exists():
            write_atomic(cfg.checkpoint_path, _dump(ckpt))
        if queue != before_q or not cfg.queue_path.exists():
            write_atomic(cfg.queue_path, _dump(queue))


def read(cfg: Config) -> tuple[dict, dict]:
    """A consistent snapshot of both files, for reports."""
    with locked(cfg.checkpoint_dir / ".state.lock"):
        return file_queue.load(cfg.queue_path), checkpoint.load(cfg.checkpoint_path)
