"""One file's chunks into the store: cut, skip what is stored, embed the rest, write.

Order of work, so that nothing is lost and nothing is paid twice:
1. what the store holds of this source is looked up once;
2. chunks are cut (file_chunks.file_chunks) and taken a group at a time (GROUP_CHUNKS);
   stored ones are skipped (or their position updated when an edit moved them), and
   a text already embedded for another source reuses that vector (one lookup a group);
3. only the rest is sent to the API, EMBED_BATCH_SIZE chunks a request,
   EMBED_CONCURRENCY requests in flight;
4. requests are taken as they are answered, not in the order they were sent, and each
   one's vectors are handed to the store at once, by the thread that got the answer: to
   the worker (lent_store: it owns them from then on and writes them with others, even if
   this process is killed next) or, in a process that opened the store itself, written
   there and then (_Direct). A kill costs only the requests in flight (EMBED_CONCURRENCY
   requests of at most EMBED_BATCH_SIZE chunks);
5. on any error, the requests already sent are waited for and handed over too; vectors
   the store may not have (its worker killed, a write that failed) are kept on disk
   (paid_vectors.py) and written when the next run starts;
6. only when the whole file is stored (`sync`) are its chunks that are no longer part of
   it deleted (never delete first), and the file recorded as done in the store.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ingestion.common.errors import Interrupted, OutOfMemory, StoreError
from ingestion.common.hashing import chunk_id, sha256_text
from ingestion.common.procinfo import rss_mb
from ingestion.common.settings import Config
from ingestion.storage import paid_vectors, schema
from ingestion.storage.lent_store import StoreLink
from ingestion.storage.store import Store
from ingestion.text import file_chunks, textfile

log = logging.getLogger("ingestion")

MAX_REQUEST_TOKENS = 250_000  # the API allows 300,000 per request; keep a margin
GROUP_CHUNKS = 256            # chunks planned together (one content lookup)


@dataclass
class Result:
    chunks: int = 0
    tokens: int = 0            # tokens in this file's chunks
    embedded_tokens: int = 0   # tokens sent to the API for it
    requests: int = 0
    reused: int = 0            # chunks already stored, or copied from another source
    removed: int = 0           # stale chunks deleted
    ids: set[str] = field(default_factory=set)
    cleanup: file_chunks.CleanupReport = field(default_factory=file_chunks.CleanupReport)


@dataclass
class _Record:
    id: str
    text: str
    meta: dict
    vector: object = None  # float32 array


# Texts being embedded right now in this process (content hash -> (request, position)):
# files ingested side by side (FILE_CONCURRENCY) that share a text pay for it once.
_EMBEDDING: dict[str, tuple[Future, int]] = {}
_EMBEDDING_LOCK = threading.Lock()


def _groups(cuts: Iterable[file_chunks.Cut], size: int) -> Iterator[list[file_chunks.Cut]]:
    group: list[file_chunks.Cut] = []
    for cut in cuts:
        group.append(cut)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _requests(records: list[_Record], size: int) -> Iterator[list[_Record]]:
    """Groups of at most size records and MAX_REQUEST_TOKENS tokens."""
    batch: list[_Record] = []
    tokens = 0
    for r in records:
        n = r.meta["token_count"]
        if batch and (len(batch) == size or tokens + n > MAX_REQUEST_TOKENS):
            yield batch
            batch, tokens = [], 0
        batch.append(r)
        tokens += n
    if batch:
        yield batch


class _Direct:
    """The store of a process that opened it itself (ingest_one_file.py; a platform without a fork
    server), with StoreLink's `put`: each request's vectors are written as soon as it is answered, by
    the thread that got the answer, so a kill costs only the requests in flight here too. Those
    answered while a write runs go together in the next (group commit within the process)."""

    def __init__(self, store: Store):
        self.store = store
        self.waiting: list[tuple] = []   # puts not yet written (under lock)
        self.failed: list[tuple] = []    # puts whose write failed (under lock)
        self.lock = threading.Lock()
        self.writing = threading.Lock()  # one write at a time

    def put(self, ids, embeddings, documents, metadatas) -> None:
        """Write these records, with any others waiting (when this returns they are written, or failed)."""
        with self.lock:
            self.waiting.append((ids, embeddings, documents, metadatas))
        with self.writing:
            with self.lock:
                batch, self.waiting = self.waiting, []
            if not batch:
                return  # written by the thread that held the store before
            try:
                self.store.add(*(sum((list(b[k]) for b in batch), []) for k in range(4)))
            except BaseException:
                with self.lock:
                    self.failed.extend(batch)
                raise

    def sync(self) -> None:
        """Everything put is written (a write that failed is raised by its own put: here, once more)."""
        with self.lock:
            if self.failed:
                raise StoreError("the store did not take every vector of this file")

    check = sync  # (StoreLink's check: has a write failed?)

    def unwritten(self) -> list[tuple]:
        """The puts whose write failed, as (ids, embeddings, documents, metadatas)."""
        with self.lock:
            kept, self.failed = self.failed, []
        return kept


def _put(hand, records: list[_Record]) -> None:
    hand.put([r.id for r in records], [r.vector for r in records], [r.text for r in records],
             [r.meta for r in records])


def ingest(cfg: Config, store: Store, embed: Callable[[list[str], int], list[list[float]]],
           path: Path, source: str, file_sha256: str, info: textfile.FileInfo, part: str = "",
           should_stop: Callable[[], bool] = lambda: False,
           after_batch: Callable[[Result], None] = lambda r: None) -> Result:
    """Store every chunk of path under source; returns what it did.

    store: the worker's (a StoreLink) or one this process opened.
    part: "" for a whole file; a split part's label otherwise (then stale chunks are
    not removed here: that waits until every part is stored).
    """
    result = Result()
    hand = store if isinstance(store, StoreLink) else _Direct(store)
    stored = store.metadata_of_source(source)
    now = int(time.time())
    cuts = file_chunks.file_chunks(cfg, path, info, result.cleanup)
    with ThreadPoolExecutor(max_workers=cfg.embed_concurrency) as pool:
        try:
            for group in _groups(cuts, GROUP_CHUNKS):
                todo = _plan(store, stored, group, source, file_sha256, part, info.encoding, now, result)
                _embed_group(pool, embed, todo, hand, result, cfg, should_stop, after_batch)
            hand.sync()  # every vector of the file is in the store (or a write's failure is raised)
        except MemoryError:
            _keep_paid(cfg, hand)
            raise OutOfMemory("MemoryError while ingesting") from None
        except BaseException:
            _keep_paid(cfg, hand)
            raise
    if not part:
        result.removed = store.remove_stale(source, result.ids, stored)
        store.mark_done(source, file_sha256, result.chunks, result.tokens)
    return result


def _keep_paid(cfg: Config, hand) -> None:
    """An error: vectors paid for that the store may not have (its worker gone, a write failed) are kept
    on disk (the error itself is raised by the caller)."""
    kept = hand.unwritten()
    if not kept:
        return
    ids, vectors, documents, metadatas = (sum((list(k[f]) for k in kept), []) for f in range(4))
    try:
        path = paid_vectors.save(cfg, ids, vectors, documents, metadatas)
        log.warning("the store did not take %d paid vectors: kept in %s, written when the next run starts",
                    len(ids), path)
    except Exception as e:
        log.error("the store did not take %d paid vectors and they could not be kept (%s): they will be "
                  "embedded again", len(ids), e)


def _plan(store: Store, stored: dict[str, dict], group: list[file_chunks.Cut], source: str, file_sha256: str,
          part: str, encoding: str, now: int, result: Result) -> list[_Record]:
    """What a group needs: skip stored chunks (fixing moved ones), reuse known vectors; the rest to embed."""
    todo: list[_Record] = []
    moved_ids, moved_meta = [], []
    for cut in group:
        c = cut.chunk
        content = sha256_text(c.text)
        cid = chunk_id(source, content)
        result.chunks += 1
        result.tokens += c.token_count
        if cid in result.ids:  # the same text twice in one file is stored once
            continue
        result.ids.add(cid)
        meta = schema.chunk_metadata(source, c.index, c.token_count, content, file_sha256, part, c.start_time,
                                     c.speakers, encoding, now, cut.citation)
        if cid in stored:
            result.reused += 1
            if schema.position(stored[cid]) != schema.position(meta):
                moved_ids.append(cid)  # same text, new place in an edited file: no embedding
                moved_meta.append({k: meta.get(k) for k in schema.POSITION})
            continue
        todo.append(_Record(cid, c.text, meta))
    if moved_ids:
        store.update_metadata(moved_ids, moved_meta)
    known = store.embeddings_by_content([r.meta["content_sha256"] for r in todo]) if todo else {}
    for r in todo:
        r.vector = known.get(r.meta["content_sha256"])
    result.reused += sum(1 for r in todo if r.vector is not None)
    return todo


@dataclass
class _Request:
    """One embeddings request of a group: its own texts, and texts another file's request is embedding."""
    mine: list[_Record]
    future: Future | None   # its vectors, handed to the store by the pool's thread (_answered)
    borrowed: list[tuple[_Record, Future, int]]
    tokens: int

    def futures(self) -> list[Future]:
        return ([self.future] if self.future is not None else []) + [f for _, f, _ in self.borrowed]

    def answered(self) -> bool:
        return all(f.done() for f in self.futures())

    def take(self, result: Result) -> list[_Record]:
        """Count it (its error, if it failed, is raised); returns its borrowed records, with their vectors."""
        if self.future is not None:
            self.future.result()
            result.embedded_tokens += self.tokens
            result.requests += 1
        for r, other, k in self.borrowed:
            r.vector = other.result()[k]
        return [r for r, _, _ in self.borrowed]


def _answered(embed, hand, records: list[_Record], tokens: int) -> list:
    """One request, run by the pool: the API's vectors, handed to the store the moment they arrive."""
    vectors = embed([r.text for r in records], tokens)
    for r, vector in zip(records, vectors):
        r.vector = vector
    _put(hand, records)
    return vectors


def _submit(pool, embed, hand, missing: list[_Record], batch_size: int) -> list[_Request]:
    """Send the requests; a text another file of this process is embedding right now is borrowed."""
    sent = []
    with _EMBEDDING_LOCK:
        for batch in _requests(missing, batch_size):
            mine, borrowed = [], []
            for r in batch:
                shared = _EMBEDDING.get(r.meta["content_sha256"])
                if shared:
                    borrowed.append((r, *shared))
                else:
                    mine.append(r)
            tokens = sum(r.meta["token_count"] for r in mine)
            future = pool.submit(_answered, embed, hand, mine, tokens) if mine else None
            for k, r in enumerate(mine):
                _EMBEDDING[r.meta["content_sha256"]] = (future, k)
            sent.append(_Request(mine, future, borrowed, tokens))
    return sent


def _embed_group(pool, embed, todo: list[_Record], hand, result: Result, cfg: Config,
                 should_stop, after_batch) -> None:
    """Embed what a group lacks: known vectors handed over first, then each request's as it is answered."""
    ready = [r for r in todo if r.vector is not None]
    if ready:
        _put(hand, ready)
    missing = [r for r in todo if r.vector is None]
    # spread over the requests in flight: 44 chunks, 4 at a time, go as 4 x 11 (one round), not 4 x 10 + 4
    per_request = max(1, min(cfg.embed_batch_size, -(-len(missing) // cfg.embed_concurrency)))
    sent = _submit(pool, embed, hand, missing, per_request)
    try:
        waiting = list(sent)
        while waiting:  # in the order they are answered: one answered early never waits behind a slow one
            wait([f for request in waiting for f in request.futures() if not f.done()], return_when=FIRST_COMPLETED)
            for request in [q for q in waiting if q.answered()]:
                waiting.remove(request)
                borrowed = request.take(result)
                if borrowed:
                    _put(hand, borrowed)
                hand.check()  # a write that failed stops the file now, not after paying for the rest
                if cfg.memory_limit_mb and rss_mb() > cfg.memory_limit_mb:
                    raise OutOfMemory(f"RSS {rss_mb():.0f} MB is over MEMORY_LIMIT_MB={cfg.memory_limit_mb}")
                if should_stop():
                    raise Interrupted("stopped by a signal")
                after_batch(result)
    except BaseException:
        for request in sent:
            if request.future is not None:
                request.future.cancel()
        # the requests already sent are answered, and handed over by the pool, before the error goes on
        wait([r.future for r in sent if r.future is not None and not r.future.cancelled()])
        raise
    finally:
        with _EMBEDDING_LOCK:
            for request in sent:
                for r in request.mine:
                    if _EMBEDDING.get(r.meta["content_sha256"], (None,))[0] is request.future:
                        del _EMBEDDING[r.meta["content_sha256"]]
