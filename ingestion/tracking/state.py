"""Changing the queue and the checkpoint together, under one lock, atomically.

    with state.transaction(cfg) as (queue, checkpoint):
        file_queue.complete(queue, path)

loads both files under `$CHECKPOINT_DIR/.state.lock`, and writes back each one that
changed when the block ends without an error. Two processes never lose each
other's updates; a kill leaves the old or the new version of each file.

What a transaction costs matters: a worker makes two per file (claim, outcome).
`checkpoint=False` leaves the checkpoint alone (a claim needs only the queue);
`checkpoint="append"` yields a checkpoint.Changes whose outcomes are appended to the
checkpoint's journal instead of rewriting it (an outcome). JSON goes through orjson.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import orjson

from ingestion.common.atomicfile import locked, write_atomic
from ingestion.common.settings import Config
from ingestion.tracking import checkpoint as checkpoint_file
from ingestion.tracking import file_queue


def dump(data: dict) -> str:
    return orjson.dumps(data).decode("utf-8")


@contextlib.contextmanager
def transaction(cfg: Config, checkpoint: bool | str = True) -> Iterator[tuple[dict, object]]:
    with locked(cfg.checkpoint_dir / ".state.lock"):
        queue, queue_text = file_queue.load(cfg.queue_path)
        queue_text = queue_text if queue_text is not None else dump(file_queue.empty())  # missing: not made
        if checkpoint == "append":
            ckpt, ckpt_text = checkpoint_file.Changes(), None
        elif checkpoint:
            ckpt, ckpt_text = checkpoint_file.load(cfg.checkpoint_path)
            if ckpt_text is None and not cfg.checkpoint_path.exists() and ckpt == checkpoint_file.empty():
                ckpt_text = dump(ckpt)  # missing and nothing to add: not made
        else:
            ckpt, ckpt_text = None, None
        yield queue, ckpt
        # checkpoint first: a kill between the two writes leaves a finished file
        # in "processing", which is requeued and then found already stored.
        if isinstance(ckpt, checkpoint_file.Changes):
            if checkpoint_file.append(cfg.checkpoint_path, ckpt):
                _fold(cfg)
        elif ckpt is not None and (text := dump(ckpt)) != ckpt_text:
            write_atomic(cfg.checkpoint_path, text)
            checkpoint_file.folded(cfg.checkpoint_path)
        if (text := dump(queue)) != queue_text:
            write_atomic(cfg.queue_path, text)


def _fold(cfg: Config) -> None:
    """Write the checkpoint with its journal folded in (the state lock is held)."""
    data, _ = checkpoint_file.load(cfg.checkpoint_path)
    write_atomic(cfg.checkpoint_path, dump(data))
    checkpoint_file.folded(cfg.checkpoint_path)


def read(cfg: Config) -> tuple[dict, dict]:
    """A consistent snapshot of both files, for reports."""
    with locked(cfg.checkpoint_dir / ".state.lock"):
        return file_queue.load(cfg.queue_path)[0], checkpoint_file.load(cfg.checkpoint_path)[0]
