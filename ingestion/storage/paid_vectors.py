"""Vectors paid for that the store could not take: kept on disk, written when the next run starts.

A write to the store can fail after its vectors were paid for: the worker that holds the
embedded store was killed (its children live on and get their answers), or a Chroma
server went away mid-file. Those vectors are not thrown away: the pipeline saves them
here (`save`), one file per failed write, and the next run writes them before any file is
claimed (`restore`), so the file's re-run finds them stored and pays only for the rest.

Format, `$CHECKPOINT_DIR/unwritten/<pid>-<n>.json` (written whole: temp file, fsync, rename):
  {"store": {"address", "collection"}, "ids": [...], "documents": [...], "metadatas": [...],
   "vectors": [base64 of float32 little-endian, ...]}
Only a run on the same store and collection writes them. A record whose source is completed
in the queue is dropped (the file finished without it, possibly from another version of its
text); any other is written with the id and metadata its file's run gave it (an upsert: writing
one twice is harmless), and a file's later run removes what its text no longer has.
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from ingestion.common.atomicfile import replacing
from ingestion.common.settings import Config

log = logging.getLogger("ingestion")
_serial = itertools.count()


def folder(cfg: Config) -> Path:
    return cfg.checkpoint_dir / "unwritten"


def _store(cfg: Config) -> dict:
    return {"address": cfg.store_address, "collection": cfg.chroma_collection}


def save(cfg: Config, ids: list[str], vectors: list, documents: list[str], metadatas: list[dict]) -> Path:
    """Keep records the store did not take; returns the file (raises StateFileError when it cannot be written)."""
    data = {"store": _store(cfg), "ids": ids, "documents": documents, "metadatas": metadatas,
            "vectors": [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]}
    path = folder(cfg) / f"{os.getpid()}-{next(_serial)}.json"
    with replacing(path) as f:
        f.write(orjson.dumps(data).decode("utf-8"))
    return path


def waiting(cfg: Config) -> list[Path]:
    """The saved files, oldest first."""
    try:
        return sorted(folder(cfg).glob("*.json"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []


def restore(cfg: Config, store, completed: Callable[[], set[str]]) -> int:
    """Write what earlier runs saved for this store and collection; returns the vectors written.
    completed(): the sources finished since (their saved vectors are dropped: a re-run stored them).
    A store error is raised (the file stays for the next run); a damaged file is set aside."""
    files = waiting(cfg)
    if not files:
        return 0
    done = completed()
    written = dropped = 0
    for path in files:
        try:
            data = orjson.loads(path.read_bytes())
            if data["store"] != _store(cfg):
                continue  # another store's: left for a run on it
            keep = [k for k, m in enumerate(data["metadatas"]) if m.get("source", "") not in done]
            vectors = [np.frombuffer(base64.b64decode(data["vectors"][k]), dtype="<f4") for k in keep]
            records = ([data["ids"][k] for k in keep], vectors, [data["documents"][k] for k in keep],
                       [data["metadatas"][k] for k in keep])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("%s is damaged (%s); set aside as %s.damaged, its vectors will be embedded again",
                        path, e, path.name)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".damaged"))
            continue
        if records[0]:
            store.add(*records)
        written += len(keep)
        dropped += len(data["ids"]) - len(keep)
        try:
            os.unlink(path)
        except FileNotFoundError:  # another worker on a shared store wrote it too
            pass
    if written or dropped:
        log.info("wrote %d vectors paid for in an earlier run that its store did not take (%s)%s", written,
                 folder(cfg), f"; {dropped} of files completed since were dropped" if dropped else "")
    return written
