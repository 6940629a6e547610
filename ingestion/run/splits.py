"""Split files: a file that ran out of memory split into parts queued in its place, a file split by
hand (auto_chunker.py), and the original finished once all its parts are stored (its stale chunks
dropped, marked done)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ingestion.common.errors import ConfigError, FileRejected, StateFileError
from ingestion.common.hashing import chunk_id, sha256_text, source_key
from ingestion.common.settings import Config
from ingestion.storage.store import Store
from ingestion.text import file_chunks, file_parts, textfile
from ingestion.tracking import file_queue, outcomes, state

log = logging.getLogger("ingestion")


def finalize_split(cfg: Config, original: str, store: Store) -> None:
    """All parts of a split file are stored: drop the original's stale chunks, mark it done."""
    with state.transaction(cfg, checkpoint=False) as (q, _):
        if not file_queue.parts_done(q, original):
            return
        parts = file_queue.parts_of(q, original)
        file_sha = file_queue.details(q, original).get("sha256")
    keep: set[str] = set()
    chunks = tokens = 0
    for p in parts:  # the ids the parts produced: cut them again (no API call)
        for cut in file_chunks.file_chunks(cfg, Path(p), textfile.inspect(Path(p))):
            keep.add(chunk_id(original, sha256_text(cut.chunk.text)))
            chunks += 1
            tokens += cut.chunk.token_count
    removed = store.remove_stale(original, keep)
    store.mark_done(original, file_sha, chunks, tokens)
    outcomes.finish_split(cfg, original, parts, file_sha, chunks, tokens)
    for p in parts:
        try:
            os.unlink(p)
        except OSError:
            pass
    log.info("completed %s from %d parts: %d chunks, %d stale removed", original, len(parts), chunks, removed)


def split_after_oom(cfg: Config, path: str, reason: str) -> bool:
    """Split a file that ran out of memory and queue its parts; fail it at the floor.

    Returns True when parts were queued."""
    with state.transaction(cfg, checkpoint=False) as (q, _):
        original = file_queue.original_of(q, path)
        original_sha = file_queue.details(q, original).get("sha256")
    try:
        size = os.path.getsize(path)
        if size <= cfg.split_min_bytes:
            raise FileRejected(f"out of memory ({reason}) even as a part of {size} bytes "
                               f"(SPLIT_MIN_BYTES={cfg.split_min_bytes}); raise MEMORY_LIMIT_MB or use "
                               "a bigger machine")
        if original == path:
            original_sha = textfile.inspect(Path(path)).sha256
        parts = file_parts.split_file(Path(path), cfg.splits_dir / source_key(original), parts=cfg.split_parts)
    except (FileRejected, OSError) as e:
        outcomes.fail(cfg, path, str(e) if isinstance(e, FileRejected) else f"cannot split: {e}")
        return False
    except StateFileError as e:  # disk full while writing parts: a problem of the run
        outcomes.release(cfg, path)
        raise e
    if len(parts) < 2:
        outcomes.fail(cfg, path, f"out of memory ({reason}) and it cannot be split further")
        return False
    outcomes.split(cfg, path, [str(p) for p in parts], original, original_sha)
    if path != original and path.startswith(str(cfg.splits_dir)):
        try:
            os.unlink(path)
        except OSError:
            pass
    log.warning("out of memory on %s (%s): split into %d parts, queued first", path, reason, len(parts))
    return True


def split_by_hand(cfg: Config, path: str, parts: int | None, max_tokens: int | None) -> tuple[list[Path], bool]:
    """auto_chunker.py: split PATH into parts (PARTS of them, else at most MAX_TOKENS each, else SPLIT_PARTS);
    a pending or failed file is replaced by its parts in the queue. Returns the parts and whether they were
    queued."""
    q, _ = state.read(cfg)
    original = file_queue.original_of(q, path)
    where = file_queue.where(q, path)
    if where == file_queue.PROCESSING:
        raise ConfigError(f"{path} is being processed right now; split it when it is not")
    info = textfile.inspect(Path(path))
    written = file_parts.split_file(Path(path), cfg.splits_dir / source_key(original),
                                    parts=None if max_tokens else (parts or cfg.split_parts), max_tokens=max_tokens)
    if where not in (file_queue.PENDING, file_queue.FAILED) or len(written) < 2:
        return written, False
    original_sha = info.sha256 if original == path else file_queue.details(q, original).get("sha256")
    outcomes.split(cfg, path, [str(x) for x in written], original, original_sha)
    return written, True
