"""One file's chunks into the store: cut, skip what is stored, embed the rest, write.

Order of work, so that nothing is lost and nothing is paid twice:
1. what the store holds of this source is looked up once;
2. chunks are cut (cutting.file_chunks) and taken a group at a time (GROUP_CHUNKS);
   stored ones are skipped (or their position updated when an edit moved them), and
   a text already embedded for another source reuses that vector (one lookup a group);
3. only the rest is sent to the API, EMBED_BATCH_SIZE chunks a request,
   EMBED_CONCURRENCY requests in flight;
4. vectors are written as they arrive, coalesced into one write per round of requests
   (EMBED_BATCH_SIZE x EMBED_CONCURRENCY vectors, at most WRITE_VECTORS) or FLUSH_SECONDS
   of work, and always before the next group is embedded: a crash loses at most one
   round of paid requests, as without coalescing;
5. on any error, vectors already paid for are still written before it is raised; when the
   store cannot take them (its worker killed, its server gone), they are kept on disk
   (unwritten.py) and written when the next run starts;
6. only when the whole file is stored are its chunks that are no longer part of it
   deleted (never delete first), and the file recorded as done in the store.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ingestion import cutting, schema, textfile, unwritten
from ingestion.errors import Interrupted, OutOfMemory
from ingestion.hashing import chunk_id, sha256_text
from ingestion.procinfo import rss_mb
from ingestion.settings import Config
from ingestion.store import Store

log = logging.getLogger("ingestion")

MAX_REQUEST_TOKENS = 250_000  # the API allows 300,000 per request; keep a margin
GROUP_CHUNKS = 256            # chunks planned together (one content lookup)
WRITE_VECTORS = 256           # vectors per store write at most ...
FLUSH_SECONDS = 1.0           # ... or this much work, whichever comes first


@dataclass
class Result:
    chunks: int = 0
    tokens: int = 0            # tokens in this file's chunks
    embedded_tokens: int = 0   # tokens sent to the API for it
    requests: int = 0
    reused: int = 0            # chunks already stored, or copied from another source
    removed: int = 0           # stale chunks deleted
    ids: set[str] = field(default_factory=set)
    cleanup: cutting.CleanupReport = field(default_factory=cutting.CleanupReport)


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


def _groups(cuts: Iterable[cutting.Cut], size: int) -> Iterator[list[cutting.Cut]]:
    group: list[cutting.Cut] = []
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


class _Writer:
    """Vectors waiting to be written: flushed at `size` vectors or FLUSH_SECONDS."""

    def __init__(self, store: Store, size: int):
        self.store = store
        self.size = min(size, WRITE_VECTORS)
        self.waiting: list[_Record] = []
        self.since = time.monotonic()

    def add(self, records: list[_Record]) -> None:
        self.waiting.extend(records)
        if len(self.waiting) >= self.size or time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.waiting:
            w = self.waiting
            self.store.add([r.id for r in w], [r.vector for r in w], [r.text for r in w], [r.meta for r in w])
            self.waiting = []
        self.since = time.monotonic()


def ingest(cfg: Config, store: Store, embed: Callable[[list[str], int], list[list[float]]],
           path: Path, source: str, file_sha256: str, info: textfile.FileInfo, part: str = "",
           should_stop: Callable[[], bool] = lambda: False,
           after_batch: Callable[[Result], None] = lambda r: None) -> Result:
    """Store every chunk of path under source; returns what it did.

    part: "" for a whole file; a split part's label otherwise (then stale chunks are
    not removed here: that waits until every part is stored).
    """
    result = Result()
    stored = store.metadata_of_source(source)
    writer = _Writer(store, cfg.embed_batch_size * cfg.embed_concurrency)
    now = int(time.time())
    cuts = cutting.file_chunks(cfg, path, info, result.cleanup)
    with ThreadPoolExecutor(max_workers=cfg.embed_concurrency) as pool:
        try:
            for group in _groups(cuts, GROUP_CHUNKS):
                todo = _plan(store, stored, group, source, file_sha256, part, info.encoding, now, result)
                _embed_group(pool, embed, todo, writer, result, cfg, should_stop, after_batch)
                writer.flush()
        except MemoryError:
            _keep_paid(cfg, writer)
            raise OutOfMemory("MemoryError while ingesting") from None
        except BaseException:
            _keep_paid(cfg, writer)
            raise
    if not part:
        result.removed = store.remove_stale(source, result.ids, stored)
        store.mark_done(source, file_sha256, result.chunks, result.tokens)
    return result


def _keep_paid(cfg: Config, writer: _Writer) -> None:
    """An error: still write the vectors already paid for, or keep them on disk when the store cannot
    take them (the error itself is raised by the caller)."""
    writer.waiting = w = [r for r in writer.waiting if r.vector is not None]
    try:
        writer.flush()
        return
    except Exception:
        pass
    try:
        path = unwritten.save(cfg, [r.id for r in w], [r.vector for r in w], [r.text for r in w], [r.meta for r in w])
        log.warning("the store did not take %d paid vectors: kept in %s, written when the next run starts",
                    len(w), path)
    except Exception as e:
        log.error("the store did not take %d paid vectors and they could not be kept (%s): they will be "
                  "embedded again", len(w), e)


def _plan(store: Store, stored: dict[str, dict], group: list[cutting.Cut], source: str, file_sha256: str,
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
    future: Future | None
    borrowed: list[tuple[_Record, Future, int]]
    tokens: int
    taken: bool = False

    def take(self, result: Result, borrowed: bool = True) -> list[_Record]:
        """Its vectors into its records (waiting for them); returns the records now complete."""
        if self.future is not None and not self.taken:
            for r, vector in zip(self.mine, self.future.result()):
                r.vector = vector
            result.embedded_tokens += self.tokens
            result.requests += 1
        self.taken = True
        if not borrowed:
            return list(self.mine)
        for r, other, k in self.borrowed:
            r.vector = other.result()[k]
        return self.mine + [r for r, _, _ in self.borrowed]

    def paid(self) -> bool:
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None


def _submit(pool, embed, missing: list[_Record], batch_size: int) -> list[_Request]:
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
            future = pool.submit(embed, [r.text for r in mine], tokens) if mine else None
            for k, r in enumerate(mine):
                _EMBEDDING[r.meta["content_sha256"]] = (future, k)
            sent.append(_Request(mine, future, borrowed, tokens))
    return sent


def _embed_group(pool, embed, todo: list[_Record], writer: _Writer, result: Result, cfg: Config,
                 should_stop, after_batch) -> None:
    """Embed what a group lacks, writing vectors as they arrive (known ones first)."""
    ready = [r for r in todo if r.vector is not None]
    if ready:
        writer.add(ready)
    missing = [r for r in todo if r.vector is None]
    # spread over the requests in flight: 44 chunks, 4 at a time, go as 4 x 11 (one round), not 4 x 10 + 4
    per_request = max(1, min(cfg.embed_batch_size, -(-len(missing) // cfg.embed_concurrency)))
    sent = _submit(pool, embed, missing, per_request)
    try:
        for request in sent:
            writer.add(request.take(result))
            if cfg.memory_limit_mb and rss_mb() > cfg.memory_limit_mb:
                raise OutOfMemory(f"RSS {rss_mb():.0f} MB is over MEMORY_LIMIT_MB={cfg.memory_limit_mb}")
            if should_stop():
                raise Interrupted("stopped by a signal")
            after_batch(result)
    except BaseException:
        for request in sent:
            if request.future is not None:
                request.future.cancel()
        for request in sent:  # keep whatever else was paid for, once the requests already sent are answered
            f = request.future
            if f is not None and not f.cancelled():
                wait([f])  # (the pool would wait for it anyway; its vectors must not be dropped)
            if not request.taken and request.paid():
                writer.waiting.extend(request.take(result, borrowed=False))
        raise
    finally:
        with _EMBEDDING_LOCK:
            for request in sent:
                for r in request.mine:
                    if _EMBEDDING.get(r.meta["content_sha256"], (None,))[0] is request.future:
                        del _EMBEDDING[r.meta["content_sha256"]]
