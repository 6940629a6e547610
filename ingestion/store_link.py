"""The worker's open store, lent to its children over a pipe: one Chroma client a run, however many children.

Embedded Chroma may be written by one process at a time (store.Store holds a lock for as
long as it is open) and loads its whole index into every process that opens it. So the
worker opens the store once, and each child reaches it through a StoreLink: the few calls
ingesting needs are sent to the worker, run there one at a time by a thread serving that
child, and the answer (or the exception) comes back. Children ingest side by side and
start without opening Chroma; the index is in memory once.

A child that dies mid-call leaves the worker to finish what it sent (a write it paid for is
written); the worker reads the child's pipe to its end before deciding the file's fate.
A worker that dies leaves its children with a StoreError: they release their files.
"""
from __future__ import annotations

import functools
import threading

from ingestion.errors import IngestionError, StoreError

# What ingesting a file asks of the store (job, pipeline): nothing else is served.
CALLS = frozenset({"claim", "renew", "unclaim", "metadata_of_source", "embeddings_by_content", "add",
                   "update_metadata", "remove_stale", "mark_done"})


class StoreLink:
    """A child's side: Store's ingesting calls, answered by the worker's store."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()  # a child's files may share it (FILES_PER_CHILD > 1)

    def __getattr__(self, name: str):
        if name not in CALLS:
            raise AttributeError(name)
        return functools.partial(self._call, name)

    def _call(self, name: str, *args, **kwargs):
        with self._lock:
            try:
                self._conn.send((name, args, kwargs))
                ok, value = self._conn.recv()
            except (EOFError, OSError):
                raise StoreError("the worker that holds the store is gone (killed or stopped)") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "StoreLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(store, conn, lock: threading.Lock) -> None:
    """The worker's side for one child: answer its calls until it closes its end (or dies)."""
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if name not in CALLS:
                raise StoreError(f"not a store call a child may make: {name}")
            with lock:
                reply = (True, getattr(store, name)(*args, **kwargs))
        except IngestionError as e:
            reply = (False, e)
        except Exception as e:  # a bug here or in Chroma: the child reports it as a problem of the store
            reply = (False, StoreError(f"store call {name} failed: {type(e).__name__}: {e}"))
        try:
            conn.send(reply)
        except (OSError, EOFError):
            continue  # the child is gone: read what else it sent, to its end
