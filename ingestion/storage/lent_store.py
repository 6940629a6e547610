"""The worker's open store, lent to its children over a pipe: one Chroma client a run, however many children.

Embedded Chroma may be written by one process at a time (store.Store holds a lock for as
long as it is open) and loads its whole index into every process that opens it. So the
worker opens the store once, and each child reaches it through a StoreLink: the few calls
ingesting needs are sent to the worker, run there one at a time, and the answer (or the
exception) comes back. Children ingest side by side and start without opening Chroma; the
index is in memory once.

Vectors paid for are handed over, not called in (`StoreLink.put`): the child sends each
answered request's vectors at once and goes on; the worker reads them as they come (a
thread per child does nothing else), owns them from then on and writes them with
others (Shared: group commit). So a child killed (kill -9, the OOM killer) loses only the
requests it had in flight: what the API answered is the worker's. The calls that depend on
those vectors (`sync`, the file marked done, stale chunks removed, a lookup of them) wait
until they are written. A write that fails is kept in `unwritten/` by the worker, and the
child's later calls fail with its error (the file is released, not recorded done); the
child asks after each request (`check`, answered at once), so it stops paying soon. Every
answer also names the puts written since the last one: the child drops its copies of them.

A child that dies leaves the worker to finish what it sent: its pipe is read to its end,
its calls answered, and what it handed over written, before `serve` returns (the worker
decides the file's fate after that). A worker that dies leaves its children with a
StoreError: each keeps the vectors the worker had not yet said were written in
`unwritten/` (StoreLink.unwritten, via the pipeline) and releases its files.
"""
from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time

from ingestion.common.errors import IngestionError, StoreError
from ingestion.storage import paid_vectors

log = logging.getLogger("ingestion")

# What ingesting a file asks of the store (job, pipeline): nothing else is served. ("put", the hand-over
# of paid vectors, is not a call: it has no answer.)
CALLS = frozenset({"claim", "renew", "unclaim", "metadata_of_source", "embeddings_by_content", "add",
                   "update_metadata", "remove_stale", "mark_done", "sync", "check"})
HOLD_VECTORS = 256   # vectors handed over are written once this many wait ...
HOLD_SECONDS = 1.0   # ... or the oldest has waited this long, or a call needs them
GONE = "the worker that holds the store is gone (killed or stopped)"


class StoreLink:
    """A child's side: Store's ingesting calls, answered by the worker's store, and `put`, the hand-over
    of paid vectors."""

    def __init__(self, conn):
        self._conn = conn
        self._calling = threading.Lock()   # one call (send, then its answer) at a time: a child's files share it
        self._sending = threading.Lock()   # one message at a time on the pipe: calls and puts
        self._serial = itertools.count()
        self._unconfirmed: dict[int, tuple] = {}  # puts the worker has not yet said are written
        self._unconfirmed_lock = threading.Lock()
        self.broken = False                # the worker is gone

    def __getattr__(self, name: str):
        if name not in CALLS:
            raise AttributeError(name)
        return functools.partial(self._call, name)

    def put(self, ids, embeddings, documents, metadatas) -> None:
        """Hand paid vectors to the worker without waiting for them to be written: from now on the worker
        writes them, even if this process is killed. A copy is kept until the worker says they are written
        (in its answers to later calls), for `unwritten` should the worker die first."""
        serial = next(self._serial)
        records = (list(ids), list(embeddings), list(documents), list(metadatas))
        with self._unconfirmed_lock:
            self._unconfirmed[serial] = records
        self._send(("put", (serial, *records), {}))

    def unwritten(self) -> list[tuple]:
        """What was put and may not be in the store: while the worker is there, nothing (it owns what it was
        given); once it is gone, every put it had not confirmed, as (ids, embeddings, documents, metadatas)."""
        if not self.broken:
            return []
        with self._unconfirmed_lock:
            kept, self._unconfirmed = list(self._unconfirmed.values()), {}
        return kept

    def _send(self, message) -> None:
        with self._sending:
            try:
                self._conn.send(message)
            except (EOFError, OSError):
                self.broken = True
                raise StoreError(GONE) from None

    def _call(self, name: str, *args, **kwargs):
        with self._calling:
            self._send((name, args, kwargs))
            try:
                ok, value, written = self._conn.recv()
            except (EOFError, OSError):
                self.broken = True
                raise StoreError(GONE) from None
        with self._unconfirmed_lock:
            for serial in written:
                self._unconfirmed.pop(serial, None)
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
    the vectors handed over and not yet written, and the texts a child is embedding right now.

    Children side by side may meet the same text (a chunk two transcripts share). The first to
    look it up and miss it embeds it; a child that looks it up meanwhile waits (at most WAIT
    seconds) until the first has written it, and then finds it stored: it is paid once.

    Writes are grouped (group commit): each call to Chroma's embedded upsert costs ~35 ms of CPU
    besides its vectors (bench/upsert_cost.py: 2,200 vectors of 1536 dimensions, 6.1 CPU-s in calls
    of 44, 5.3 in calls of 88). Vectors handed over (`put`) wait, all children's together, until
    HOLD_VECTORS of them or HOLD_SECONDS, or until a call needs them (`_needs`); a synchronous `add`
    is written with all that waits, and answered once written."""

    WAIT = 60.0

    def __init__(self, store, hold_vectors: int = HOLD_VECTORS, hold_seconds: float = HOLD_SECONDS):
        self.store = store
        self.lock = threading.Condition()        # the store: held for every call to it
        self.embedding: dict[str, object] = {}  # content hash -> the child embedding it
        self.writes: list[_Write] = []           # adds and puts waiting for the store (under writes_lock)
        self.writes_lock = threading.Lock()      # (never held while the store works: puts never wait for it)
        self.arrived = threading.Condition(self.writes_lock)  # wakes the writer
        self.hurry = 0                           # lookups waiting for another child's text (under writes_lock)
        self.hold_vectors, self.hold_seconds = hold_vectors, hold_seconds
        self.upserts = 0                         # store writes tried (a test counts them)
        threading.Thread(target=self._write_held, daemon=True, name="store-writer").start()

    def put(self, child: "_Child", serial: int, ids, embeddings, documents, metadatas) -> None:
        """A child's paid vectors, now the worker's to write (returns at once)."""
        with self.arrived:
            self.writes.append(_Write(child, ids, embeddings, documents, metadatas, serial=serial))
            self.arrived.notify()

    def call(self, child, name: str, args, kwargs):
        """name(*args) for child: `sync` waits until its puts are written; `check` only says whether one of
        them failed (at once, without the store); the rest are the store's, after the writes they depend on.
        Once a write of child's failed, its calls raise that error (but `unclaim`)."""
        if name == "add":
            return self._add(_Write(child, *args, **kwargs))
        if name == "check":
            if getattr(child, "error", None) is not None:
                raise child.error
            return None
        with self.lock:
            self._write_while(lambda w: _needs(name, args, child, w))
            error = getattr(child, "error", None)
            if error is not None and name != "unclaim":
                raise error  # a write of this child's failed: none of its files may be recorded done
            if name == "sync":
                return None
            if name == "embeddings_by_content":
                hashes = set(args[0])
                self._wait_for_others(child, hashes)
            value = getattr(self.store, name)(*args, **kwargs)
            if name == "embeddings_by_content":
                for h in hashes - set(value):
                    self.embedding.setdefault(h, child)
            return value

    def flush(self, child) -> None:
        """Write what child handed over (its end is closed: its file's fate is decided next)."""
        with self.lock:
            self._write_while(lambda w: w.child is child)

    def gone(self, child) -> None:
        """A child's pipe is closed: what it was embedding is nobody's now."""
        with self.lock:
            self._done(child, [h for h, c in self.embedding.items() if c is child])

    def _wait_for_others(self, child, hashes: set[str]) -> None:
        """Under self.lock: until no other child is embedding one of hashes (its vectors written)."""
        if all(self.embedding.get(h, child) is child for h in hashes):
            return
        with self.arrived:
            self.hurry += 1  # what they hand over is written at once
            self.arrived.notify()
        try:
            self.lock.wait_for(lambda: all(self.embedding.get(h, child) is child for h in hashes),
                               timeout=self.WAIT)
        finally:
            with self.writes_lock:
                self.hurry -= 1

    def _add(self, mine: "_Write") -> None:
        with self.writes_lock:
            self.writes.append(mine)
        with self.lock:
            self._write_while(lambda w: w is mine)  # (unless another thread wrote it meanwhile)
        if mine.error is not None:
            raise mine.error

    def _write_held(self) -> None:
        """The writer: vectors handed over, once enough of them wait, or long enough, or someone waits for them."""
        while True:
            with self.arrived:
                while (left := self._time_left()) is None or left > 0:
                    self.arrived.wait(left)
            with self.lock:
                self._write_while(lambda w: w.serial is not None)

    def _time_left(self) -> float | None:
        """Under writes_lock: seconds until the puts waiting are due (None: none waits)."""
        held = [w for w in self.writes if w.serial is not None]
        if not held:
            return None
        if self.hurry or sum(len(w.ids) for w in held) >= self.hold_vectors:
            return 0.0
        return held[0].since + self.hold_seconds - time.monotonic()

    def _write_while(self, needed) -> None:
        """Under self.lock: write what waits, all of it in as few upserts as its ids allow, until nothing
        that needed(write) is true of waits."""
        while True:
            with self.writes_lock:
                if not any(needed(w) for w in self.writes):
                    return
                batch, ids = [], set()
                for w in list(self.writes):  # (an id twice in one upsert is refused: never together)
                    if ids.isdisjoint(w.ids):
                        batch.append(w)
                        ids.update(w.ids)
                        self.writes.remove(w)
            self._write(batch)

    def _write(self, batch: list["_Write"]) -> None:
        try:
            self.store.add(*(sum((getattr(w, f) for w in batch), []) for f in _Write.FIELDS))
            error = None
        except Exception as e:  # every write of the batch failed: each child is told
            error = e
        self.upserts += 1
        for w in batch:
            w.answered, w.error = True, error
            if w.serial is not None:
                if error is not None:
                    w.child.error = w.child.error or error
                    _keep(self.store.cfg, w)
                w.child.written(w.serial)
            self._done(w.child, [m.get("content_sha256") for m in w.metadatas])

    def _done(self, child, hashes) -> None:
        for h in hashes:
            if self.embedding.get(h) is child:
                del self.embedding[h]
        self.lock.notify_all()


def _needs(name: str, args, child, w: "_Write") -> bool:
    """Does the call `name(*args)` of child depend on the waiting write w (so that w must be written first)?"""
    if name == "sync":
        return w.child is child
    if name in ("metadata_of_source", "remove_stale", "mark_done"):
        return any(m.get("source") == args[0] for m in w.metadatas)
    if name == "embeddings_by_content":
        hashes = set(args[0])
        return any(m.get("content_sha256") in hashes for m in w.metadatas)
    if name == "update_metadata":
        return not set(args[0]).isdisjoint(w.ids)
    return False


def _keep(cfg, w: "_Write") -> None:
    """A put the store did not take: kept on disk, written when the next run starts."""
    try:
        path = paid_vectors.save(cfg, w.ids, w.embeddings, w.documents, w.metadatas)
        log.warning("the store did not take %d paid vectors: kept in %s, written when the next run starts",
                    len(w.ids), path)
    except Exception as e:
        log.error("the store did not take %d paid vectors and they could not be kept (%s): they will be "
                  "embedded again", len(w.ids), e)


class _Write:
    """One child's add or put, waiting for the store (a put has its serial number, the add None)."""
    FIELDS = ("ids", "embeddings", "documents", "metadatas")

    def __init__(self, child, ids, embeddings, documents, metadatas, serial: int | None = None):
        self.child = child
        self.ids, self.embeddings, self.documents, self.metadatas = \
            list(ids), list(embeddings), list(documents), list(metadatas)
        self.serial = serial
        self.since = time.monotonic()
        self.answered = False
        self.error: BaseException | None = None


class _Child:
    """One child served: its puts written since its last answer, and the error of one that failed."""

    def __init__(self):
        self.error: BaseException | None = None
        self._written: list[int] = []
        self._lock = threading.Lock()

    def written(self, serial: int) -> None:
        with self._lock:
            self._written.append(serial)

    def take_written(self) -> list[int]:
        with self._lock:
            taken, self._written = self._written, []
        return taken


def serve(shared: Shared, conn) -> None:
    """The worker's side for one child, until it closes its end (or dies): this thread reads (puts are
    the worker's as soon as they arrive), another answers the calls in order. Returns once its calls
    are answered and what it handed over is written (or kept in unwritten/)."""
    child = _Child()
    calls: queue.Queue = queue.Queue()
    answering = threading.Thread(target=_answer, args=(shared, conn, child, calls), daemon=True,
                                 name="store-calls")
    answering.start()
    try:
        while True:
            try:
                name, args, kwargs = conn.recv()
            except (EOFError, OSError):
                return
            if name == "put":
                shared.put(child, *args)
            else:
                calls.put((name, args, kwargs))
    finally:
        calls.put(None)
        answering.join()
        shared.flush(child)
        shared.gone(child)


def _answer(shared: Shared, conn, child: _Child, calls: queue.Queue) -> None:
    while (call := calls.get()) is not None:
        name, args, kwargs = call
        try:
            if name not in CALLS:
                raise StoreError(f"not a store call a child may make: {name}")
            reply = (True, shared.call(child, name, args, kwargs))
        except IngestionError as e:
            reply = (False, e)
        except Exception as e:  # a bug here or in Chroma: the child reports it as a problem of the store
            reply = (False, StoreError(f"store call {name} failed: {type(e).__name__}: {e}"))
        try:
            conn.send((*reply, child.take_written()))
        except (OSError, EOFError):
            pass  # the child is gone: its other calls are still answered (to nobody), its puts written
