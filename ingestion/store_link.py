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


class Shared:
    """The worker's side, shared by the threads serving its children: the store, one call at a time,
    and the texts a child is embedding right now.

    Children side by side may meet the same text (a chunk two transcripts share). The first to
    look it up and miss it embeds it; a child that looks it up meanwhile waits (at most WAIT
    seconds) until the first has written it, and then finds it stored: it is paid once.

    Writes that arrive while the store is busy are written together, in one call (a group commit):
    each call to Chroma's embedded upsert costs ~35 ms of CPU besides its vectors (bench/upsert_cost.py:
    2,200 vectors of 1536 dimensions, 6.1 CPU-s in calls of 44, 5.3 in calls of 88). Each child is
    answered only once its own vectors are written, as before."""

    WAIT = 60.0

    def __init__(self, store):
        self.store = store
        self.lock = threading.Condition()
        self.embedding: dict[str, object] = {}  # content hash -> the child embedding it
        self.writes: list[_Write] = []           # adds waiting for the store (under writes_lock)
        self.writes_lock = threading.Lock()
        self.upserts = 0                         # store writes tried (a test counts them)

    def call(self, child, name: str, args, kwargs):
        if name == "add":
            return self._add(_Write(child, *args, **kwargs))
        with self.lock:
            if name == "embeddings_by_content":
                hashes = set(args[0])
                self.lock.wait_for(lambda: all(self.embedding.get(h, child) is child for h in hashes),
                                   timeout=self.WAIT)
            value = getattr(self.store, name)(*args, **kwargs)
            if name == "embeddings_by_content":
                for h in hashes - set(value):
                    self.embedding.setdefault(h, child)
            return value

    def _add(self, mine: "_Write") -> None:
        with self.writes_lock:
            self.writes.append(mine)
        with self.lock:
            while not mine.answered:  # no other thread wrote it meanwhile: write it, with all that waits
                with self.writes_lock:
                    batch, ids = [], set()
                    for w in list(self.writes):  # (an id twice in one upsert is refused: never together)
                        if ids.isdisjoint(w.ids):
                            batch.append(w)
                            ids.update(w.ids)
                            self.writes.remove(w)
                try:
                    self.store.add(*(sum((getattr(w, f) for w in batch), []) for f in _Write.FIELDS))
                    error = None
                except Exception as e:  # every write of the batch failed: each child is told
                    error = e
                self.upserts += 1
                for w in batch:
                    w.answered, w.error = True, error
                    self._done(w.child, [m.get("content_sha256") for m in w.metadatas])
        if mine.error is not None:
            raise mine.error

    def _done(self, child, hashes) -> None:
        for h in hashes:
            if self.embedding.get(h) is child:
                del self.embedding[h]
        self.lock.notify_all()

    def gone(self, child) -> None:
        """A child's pipe is closed: what it was embedding is nobody's now."""
        with self.lock:
            self._done(child, [h for h, c in self.embedding.items() if c is child])


class _Write:
    """One child's add, waiting for the store."""
    FIELDS = ("ids", "embeddings", "documents", "metadatas")

    def __init__(self, child, ids, embeddings, documents, metadatas):
        self.child = child
        self.ids, self.embeddings, self.documents, self.metadatas = \
            list(ids), list(embeddings), list(documents), list(metadatas)
        self.answered = False
        self.error: BaseException | None = None


def serve(shared: Shared, conn) -> None:
    """The worker's side for one child: answer its calls until it closes its end (or dies)."""
    child = object()
    try:
        _serve(shared, conn, child)
    finally:
        shared.gone(child)


def _serve(shared: Shared, conn, child) -> None:
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if name not in CALLS:
                raise StoreError(f"not a store call a child may make: {name}")
            reply = (True, shared.call(child, name, args, kwargs))
        except IngestionError as e:
            reply = (False, e)
        except Exception as e:  # a bug here or in Chroma: the child reports it as a problem of the store
            reply = (False, StoreError(f"store call {name} failed: {type(e).__name__}: {e}"))
        try:
            conn.send(reply)
        except (OSError, EOFError):
            continue  # the child is gone: read what else it sent, to its end
