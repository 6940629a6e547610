"""One file into the store: read, chunk, skip what is stored, embed the rest, write.

Order of work, so that nothing is lost and nothing is paid twice:
1. chunks are cut as the file is read, and grouped into batches;
2. a batch's ids (source + text hash) are looked up: stored ones are skipped, and a
   text already embedded for another source reuses that vector;
3. only the rest is sent to the API (EMBED_CONCURRENCY requests in flight), and each
   batch is written as soon as its vectors arrive, in order;
4. on any error, batches already paid for are still written before it is raised;
5. only when the whole file is stored are its chunks that are no longer part of it
   deleted (never delete first), and the file recorded as done in the store.
"""
from __future__ import annotations

import hashlib
import resource
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ingestion import chunking, textfile
from ingestion.errors import Interrupted, OutOfMemory
from ingestion.settings import Config
from ingestion.store import Store, chunk_id

MAX_REQUEST_TOKENS = 250_000  # the API allows 300,000 per request; keep a margin


@dataclass
class Result:
    chunks: int = 0
    tokens: int = 0            # tokens in this file's chunks
    embedded_tokens: int = 0   # tokens sent to the API for it
    requests: int = 0
    reused: int = 0            # chunks already stored, or copied from another source
    removed: int = 0           # stale chunks deleted
    ids: set[str] = field(default_factory=set)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def batches(chunks: Iterable[chunking.Chunk], size: int) -> Iterator[list[chunking.Chunk]]:
    """Groups of at most size chunks and MAX_REQUEST_TOKENS tokens."""
    batch: list[chunking.Chunk] = []
    tokens = 0
    for chunk in chunks:
        if batch and (len(batch) == size or tokens + chunk.token_count > MAX_REQUEST_TOKENS):
            yield batch
            batch, tokens = [], 0
        batch.append(chunk)
        tokens += chunk.token_count
    if batch:
        yield batch


@dataclass
class _Batch:
    ids: list[str]
    texts: list[str]
    metadatas: list[dict]
    vectors: dict[int, list[float]]  # position -> vector already known
    future: Future | None
    tokens: int
    mine: list[int] = field(default_factory=list)  # positions this batch's request embeds
    borrowed: dict[int, tuple[Future, int]] = field(default_factory=dict)  # position -> another request's


# Texts being embedded right now in this process (content hash -> (request, position)):
# files ingested side by side (FILE_CONCURRENCY) that share a text pay for it once.
_EMBEDDING: dict[str, tuple[Future, int]] = {}
_EMBEDDING_LOCK = threading.Lock()


def _submit(pool: ThreadPoolExecutor, embed, b: _Batch) -> None:
    """Send what the batch still needs, borrowing texts another file's request already carries."""
    with _EMBEDDING_LOCK:
        for i in range(len(b.ids)):
            if i in b.vectors:
                continue
            shared = _EMBEDDING.get(b.metadatas[i]["content_sha256"])
            if shared:
                b.borrowed[i] = shared
            else:
                b.mine.append(i)
        b.tokens = sum(b.metadatas[i]["token_count"] for i in b.mine)
        if b.mine:
            b.future = pool.submit(embed, [b.texts[i] for i in b.mine], b.tokens)
            for k, i in enumerate(b.mine):
                _EMBEDDING[b.metadatas[i]["content_sha256"]] = (b.future, k)


def _forget(b: _Batch) -> None:
    with _EMBEDDING_LOCK:
        for i in b.mine:
            h = b.metadatas[i]["content_sha256"]
            if _EMBEDDING.get(h, (None,))[0] is b.future:
                del _EMBEDDING[h]


def ingest(cfg: Config, store: Store, embed: Callable[[list[str], int], list[list[float]]],
           path: Path, source: str, file_sha256: str, info: textfile.FileInfo, part: str = "",
           should_stop: Callable[[], bool] = lambda: False,
           after_batch: Callable[[Result], None] = lambda r: None) -> Result:
    """Store every chunk of path under source; returns what it did.

    part: "" for a whole file; a split part's label otherwise (then stale chunks are
    not removed here: that waits until every part is stored).
    """
    result = Result()
    in_flight: deque[_Batch] = deque()
    now = int(time.time())

    def write(b: _Batch) -> None:
        try:
            if b.future is not None:
                vectors = b.future.result()
                for k, i in enumerate(b.mine):
                    b.vectors[i] = vectors[k]
                result.embedded_tokens += b.tokens
                result.requests += 1
            for i, (future, k) in b.borrowed.items():
                b.vectors[i] = future.result()[k]
        finally:
            _forget(b)
        order = sorted(b.vectors)
        store.add([b.ids[i] for i in order], [b.vectors[i] for i in order],
                  [b.texts[i] for i in order], [b.metadatas[i] for i in order])

    def drain_then_raise(error: BaseException) -> None:
        while in_flight:  # keep what is already paid for
            b = in_flight.popleft()
            try:
                write(b)
            except Exception:
                pass
        raise error

    chunks = chunking.iter_chunks(textfile.iter_text(path, info), cfg.chunk_max_tokens, cfg.chunk_overlap_tokens)
    with ThreadPoolExecutor(max_workers=cfg.embed_concurrency) as pool:
        try:
            for group in batches(chunks, cfg.embed_batch_size):
                b = _plan(store, group, source, file_sha256, part, info.encoding, now, result)
                if b is not None:
                    _submit(pool, embed, b)
                    in_flight.append(b)
                while len(in_flight) > cfg.embed_concurrency or (in_flight and in_flight[0].future is None):
                    write(in_flight.popleft())
                if cfg.memory_limit_mb and rss_mb() > cfg.memory_limit_mb:
                    raise OutOfMemory(f"RSS {rss_mb():.0f} MB is over MEMORY_LIMIT_MB={cfg.memory_limit_mb}")
                if should_stop():
                    raise Interrupted("stopped by a signal")
                after_batch(result)
            while in_flight:
                write(in_flight.popleft())
        except MemoryError:
            drain_then_raise(OutOfMemory("MemoryError while ingesting"))
        except BaseException as e:
            drain_then_raise(e)
    if not part:
        result.removed = store.remove_stale(source, result.ids)
        store.mark_done(source, file_sha256, result.chunks, result.tokens)
    return result


def _plan(store: Store, group: list[chunking.Chunk], source: str, file_sha256: str, part: str,
          encoding: str, now: int, result: Result) -> _Batch | None:
    """Work out what a batch needs: skip stored chunks, reuse known vectors, fix stale metadata."""
    ids, texts, metas = [], [], []
    for c in group:
        content = sha256_text(c.text)
        cid = chunk_id(source, content)
        result.chunks += 1
        result.tokens += c.token_count
        if cid in result.ids:  # the same text twice in one file is stored once
            continue
        result.ids.add(cid)
        ids.append(cid)
        texts.append(c.text)
        metas.append({"source": source, "chunk_index": c.index, "part": part, "token_count": c.token_count,
                      "content_sha256": content, "file_sha256": file_sha256, "start_time": c.start_time,
                      "speakers": ", ".join(c.speakers), "encoding": encoding, "ingested_at": now})
    if not ids:
        return None
    stored = store.stored_metadata(ids)
    moved = [i for i, cid in enumerate(ids) if cid in stored and _position(stored[cid]) != _position(metas[i])]
    if moved:  # same text, new place in an edited file: update metadata, no embedding
        store.update_metadata([ids[i] for i in moved],
                              [{k: metas[i][k] for k in ("chunk_index", "part", "file_sha256", "start_time",
                                                        "speakers")} for i in moved])
    keep = [i for i, cid in enumerate(ids) if cid not in stored]
    result.reused += len(ids) - len(keep)
    if not keep:
        return None
    ids, texts, metas = [ids[i] for i in keep], [texts[i] for i in keep], [metas[i] for i in keep]
    known = store.embeddings_by_content([m["content_sha256"] for m in metas])
    vectors = {i: known[m["content_sha256"]] for i, m in enumerate(metas) if m["content_sha256"] in known}
    result.reused += len(vectors)
    return _Batch(ids, texts, metas, vectors, None, 0)


def _position(meta: dict) -> tuple:
    return tuple(meta.get(k) for k in ("chunk_index", "part", "file_sha256", "start_time", "speakers"))
