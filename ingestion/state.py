"""Changing the queue and the checkpoint together, under one lock, atomically.

    with state.transaction(cfg) as (queue, checkpoint):
        file_queue.complete(queue, path)

loads both files under `$CHECKPOINT_DIR/.state.lock`, and writes back each one that
changed when the block ends without an error. Two processes never lose each
other's updates; a kill leaves the old or the new version of each file.
`transaction(cfg, checkpoint=False)` leaves the checkpoint unread (and yields None
for it): a claim needs only the queue. The cost of a transaction is one parse and
one dump of each file it touches (the C JSON encoder; no copies of the state).
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator

from ingestion import checkpoint as checkpoint_file
from ingestion import file_queue
from ingestion.atomicfile import locked, write_atomic
from ingestion.settings import Config


def dump(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False)


@contextlib.contextmanager
def transaction(cfg: Config, checkpoint: bool = True) -> Iterator[tuple[dict, dict | None]]:
    with locked(cfg.checkpoint_dir / ".state.lock"):
        queue, queue_text = file_queue.load(cfg.queue_path)
        queue_text = queue_text if queue_text is not None else dump(file_queue.empty())  # missing: not made
        ckpt, ckpt_text = checkpoint_file.load(cfg.checkpoint_path) if checkpoint else (None, None)
        ckpt_text = ckpt_text if ckpt_text is not None else dump(checkpoint_file.empty())
        yield queue, ckpt
        # checkpoint first: a kill between the two writes leaves a finished file
        # in "processing", which is requeued and then found already stored.
        if ckpt is not None and (text := dump(ckpt)) != ckpt_text:
            write_atomic(cfg.checkpoint_path, text)
        if (text := dump(queue)) != queue_text:
            write_atomic(cfg.queue_path, text)


def read(cfg: Config) -> tuple[dict, dict]:
    """A consistent snapshot of both files, for reports."""
    with locked(cfg.checkpoint_dir / ".state.lock"):
        return file_queue.load(cfg.queue_path)[0], checkpoint_file.load(cfg.checkpoint_path)[0]
