"""The vector store: ChromaDB, embedded (PersistentClient) or a server (HttpClient).

Two collections:
- CHROMA_COLLECTION holds the chunks (cosine space), one record a chunk;
- CHROMA_COLLECTION + "_files" holds one record a finished source file (its path,
  content hash, chunk and token counts), so "is this file done?" can be answered
  from the store alone, even when the queue and checkpoint are gone.

The embedded store is not safe for two writing processes (it loses vectors
silently), so a process that opens it holds an exclusive lock on
CHROMA_PATH/.ingestion.lock until it closes it. Through a server, no lock is needed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import time
from typing import Iterator

from ingestion.errors import ConfigError, StoreBusy, StoreMismatch
from ingestion.settings import Config

log = logging.getLogger(__name__)

MODEL_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
PAGE = 1000  # ids per page when listing a collection


def model_dimensions(cfg: Config) -> int:
    return cfg.embedding_dimensions or MODEL_DIMENSIONS.get(cfg.embedding_model, 0)


def make_client(cfg: Config):
    """A Chroma client for the configured mode; embedded mode creates the folder."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    try:
        if cfg.chroma_api_key:
            return chromadb.CloudClient(tenant=cfg.chroma_tenant, database=cfg.chroma_database,
                                        api_key=cfg.chroma_api_key, settings=settings)
        if cfg.chroma_host:
            headers = {"Authorization": f"Bearer {cfg.chroma_auth_token}"} if cfg.chroma_auth_token else None
            return chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, ssl=cfg.chroma_ssl,
                                       headers=headers, settings=settings)
    except Exception as e:  # remote clients check the server at once
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if cfg.chroma_api_key:
            raise ConfigError(f"cannot reach Chroma Cloud: {why}") from None
        raise ConfigError(f"cannot reach the Chroma server at {cfg.chroma_host}:{cfg.chroma_port}: {why}") from None
    cfg.chroma_path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(cfg.chroma_path), settings=settings)


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def chunk_id(source: str, content_sha256: str) -> str:
    """Deterministic: the same text of the same source always gets the same id."""
    return f"{source_key(source)}-{content_sha256[:32]}"


class Store:
    """An open store. Use as a context manager so the embedded lock is released."""

    def __init__(self, cfg: Config, wait: bool = True):
        self.cfg = cfg
        self._lock_fd = None
        if not cfg.remote_store:
            self._lock(wait)
        try:
            self.client = make_client(cfg)
            self.max_batch = self.client.get_max_batch_size()
            self.chunks = self._collection(cfg.chroma_collection, chunks=True)
            self.files = self._collection(cfg.chroma_collection + "_files", chunks=False)
            self.leases = self._collection(cfg.chroma_collection + "_leases", chunks=False) \
                if cfg.remote_store else None
        except BaseException:
            self.close()
            raise

    def _lock(self, wait: bool) -> None:
        self.cfg.chroma_path.mkdir(parents=True, exist_ok=True)
        path = self.cfg.chroma_path / ".ingestion.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise StoreBusy(f"the embedded store {self.cfg.chroma_path} is in use by another process") from None
            log.info("waiting for the embedded store %s (another process is writing to it)", self.cfg.chroma_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def _collection(self, name: str, chunks: bool):
        model, dims = self.cfg.embedding_model, model_dimensions(self.cfg)
        metadata = {"hnsw:space": "cosine"}
        if chunks:
            metadata.update(embedding_model=model, embedding_dimensions=dims)
        col = self.client.get_or_create_collection(name, metadata=metadata, embedding_function=None)
        if chunks:
            stored = col.metadata or {}
            if stored.get("embedding_model", model) != model or stored.get("embedding_dimensions", dims) != dims:
                raise StoreMismatch(
                    f"collection {name!r} holds {stored.get('embedding_model')} vectors of "
                    f"{stored.get('embedding_dimensions')} dimensions, but EMBEDDING_MODEL={model} "
                    f"gives {dims}; use another CHROMA_COLLECTION or the same model")
        return col

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- chunks ----------------------------------------------------------------
    def stored_metadata(self, ids: list[str]) -> dict[str, dict]:
        """id -> metadata for those of ids already stored (embedding not loaded)."""
        found = self.chunks.get(ids=ids, include=["metadatas"])
        return dict(zip(found["ids"], found["metadatas"]))

    def embeddings_by_content(self, content_hashes: list[str]) -> dict[str, list[float]]:
        """content_sha256 -> a stored embedding of the same text (from any source)."""
        if not content_hashes:
            return {}
        found = self.chunks.get(where={"content_sha256": {"$in": sorted(set(content_hashes))}},
                                include=["metadatas", "embeddings"])
        return {m["content_sha256"]: [float(x) for x in e] for m, e in zip(found["metadatas"], found["embeddings"])}

    def add(self, ids, embeddings, documents, metadatas) -> None:
        for i in range(0, len(ids), self.max_batch):
            s = slice(i, i + self.max_batch)
            self.chunks.add(ids=ids[s], embeddings=embeddings[s], documents=documents[s], metadatas=metadatas[s])

    def update_metadata(self, ids: list[str], metadatas: list[dict]) -> None:
        for i in range(0, len(ids), self.max_batch):
            self.chunks.update(ids=ids[i:i + self.max_batch], metadatas=metadatas[i:i + self.max_batch])

    def ids_of_source(self, source: str) -> Iterator[tuple[str, dict]]:
        """(id, metadata) of every chunk whose source is this file, page by page."""
        offset = 0
        while True:
            page = self.chunks.get(where={"source": source}, include=["metadatas"], limit=PAGE, offset=offset)
            yield from zip(page["ids"], page["metadatas"])
            if len(page["ids"]) < PAGE:
                return
            offset += PAGE

    def remove_stale(self, source: str, keep: set[str]) -> int:
        """Delete chunks of source that are not in keep; returns how many went.

        A stale chunk that stands for other sources too (after deduplication) is
        handed over to them instead of deleted, so their text stays stored.
        """
        stale = [(i, m) for i, m in self.ids_of_source(source) if i not in keep]
        delete = [i for i, m in stale if not m.get("also_sources")]
        for i, m in stale:
            others = m.get("also_sources")
            if others:
                update = {"source": others[0], "also_sources": others[1:] or None}
                self.chunks.update(ids=[i], metadatas=[update])
        for n in range(0, len(delete), self.max_batch):
            self.chunks.delete(ids=delete[n:n + self.max_batch])
        return len(delete)

    def count(self) -> int:
        return self.chunks.count()

    # ---- files -----------------------------------------------------------------
    def mark_done(self, source: str, file_sha256: str, chunks: int, tokens: int) -> None:
        """Record that source, with this content, is fully stored."""
        angle = int(file_sha256[:8], 16) / 0xFFFFFFFF * 2 * math.pi  # distinct tiny vectors
        self.files.upsert(ids=[source_key(source)], embeddings=[[math.cos(angle), math.sin(angle)]],
                          documents=[source],
                          metadatas=[{"source": source, "file_sha256": file_sha256,
                                      "chunks": chunks, "tokens": tokens}])

    def done_files(self) -> dict[str, dict]:
        """source -> its record, for every file recorded as fully stored."""
        out: dict[str, dict] = {}
        offset = 0
        while True:
            page = self.files.get(include=["metadatas"], limit=PAGE, offset=offset)
            for m in page["metadatas"]:
                out[m["source"]] = m
            if len(page["ids"]) < PAGE:
                return out
            offset += PAGE

    # ---- leases (shared stores only) -----------------------------------------
    def claim(self, source: str, owner: str, seconds: float, settle: float = 0.3) -> str | None:
        """Take source for owner in the shared store; returns the other owner when it is taken.

        Workers on different machines share only the store. Chroma has no
        compare-and-set, so: read; if free (or expired, or ours) write our lease;
        wait a moment; read again. Of two workers writing at once, the later
        write wins and both read it back, so only one goes on.
        """
        if self.leases is None:
            return None
        key = [source_key(source)]
        for _ in range(2):
            found = self.leases.get(ids=key, include=["metadatas"])
            if found["ids"]:
                m = found["metadatas"][0]
                if m.get("owner") != owner and m.get("until", 0) > time.time() and _owner_alive(m.get("owner", "")):
                    return m.get("owner")
                if m.get("owner") == owner:
                    break
            self._write_lease(source, owner, seconds)
            time.sleep(settle)
        return None

    def renew(self, source: str, owner: str, seconds: float) -> None:
        if self.leases is not None:
            self._write_lease(source, owner, seconds)

    def unclaim(self, source: str, owner: str) -> None:
        if self.leases is None:
            return
        found = self.leases.get(ids=[source_key(source)], include=["metadatas"])
        if found["ids"] and found["metadatas"][0].get("owner") == owner:
            self.leases.delete(ids=[source_key(source)])

    def _write_lease(self, source: str, owner: str, seconds: float) -> None:
        self.leases.upsert(ids=[source_key(source)], embeddings=[[1.0, 0.0]], documents=[source],
                           metadatas=[{"source": source, "owner": owner, "until": time.time() + seconds}])

    def done_record(self, source: str) -> dict | None:
        found = self.files.get(ids=[source_key(source)], include=["metadatas"])
        return found["metadatas"][0] if found["ids"] else None


def _owner_alive(owner: str) -> bool:
    """A lease of this host whose process is gone is free; another host's is taken at its word."""
    import socket

    from ingestion.file_queue import pid_alive

    host, _, pid = owner.rpartition(":")
    return host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid))


@contextlib.contextmanager
def opened(cfg: Config, wait: bool = True) -> Iterator[Store]:
    store = Store(cfg, wait=wait)
    try:
        yield store
    finally:
        store.close()
