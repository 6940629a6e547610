"""The vector store: ChromaDB, embedded (PersistentClient), a server (HttpClient) or Chroma Cloud.

Collections:
- CHROMA_COLLECTION holds the chunks (cosine space), one record a chunk; its metadata
  is the collection's record of how it was made (RECORD_KEYS), stamped on its first
  successful write;
- CHROMA_COLLECTION + "_files" holds one record a finished source file (its path,
  content hash, chunk and token counts), so "is this file done?" can be answered
  from the store alone, even when the queue and checkpoint are gone;
- CHROMA_COLLECTION + "_leases" (shared stores only): which worker holds which file
  (storage/leases.py).

Every Chroma call of the project goes through Store. A call that fails is retried
with backoff (a server's internal error, a timeout, a dropped connection), then
becomes a StoreError: a problem of the run, which stops it and never fails a file.

The embedded store is not safe for two writing processes (it loses vectors
silently), so a process that opens it holds an exclusive lock on
CHROMA_PATH/.ingestion.lock until it closes it. Through a server, no lock is needed.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import threading
import time
from typing import Callable, Iterator

from ingestion.common.errors import ConfigError, StoreBusy, StoreError, StoreMismatch
from ingestion.common.hashing import source_key
from ingestion.common.settings import Config
from ingestion.openai_api import models
from ingestion.storage import leases, chroma_sqlite

log = logging.getLogger(__name__)

READER_WAIT = 60.0        # seconds a worker waits for a brief reader (--status, a query) of the embedded store
PAGE = 1000              # records per page when listing a collection
MIN_FREE_BYTES = 32 * 2**20  # embedded mode: free disk space below which nothing is written
RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds between tries of a failing store call
MADE_BY = "transcript-ingestion"
OUR_ID = re.compile(r"[0-9a-f]{16}-[0-9a-f]{32}")


def wanted_record(cfg: Config) -> dict:
    """How this run would make the collection: what its record must say."""
    from ingestion.text import chunking, page_layout

    return {"made_by": MADE_BY, "embedding_model": cfg.embedding_model,
            "embedding_dimensions": models.dimensions(cfg.embedding_model, cfg.embedding_dimensions) or 0,
            "distance": "cosine", "tokenizer": models.TOKENIZER, "chunk_max_tokens": cfg.chunk_max_tokens,
            "chunk_overlap_tokens": cfg.chunk_overlap_tokens, "chunker_version": chunking.CHUNKER_VERSION,
            "text_cleanup": cfg.text_cleanup,
            "cleanup_version": page_layout.CLEANUP_VERSION if cfg.text_cleanup == "auto" else 0}


RECORD_SETTING = {"embedding_model": "EMBEDDING_MODEL", "embedding_dimensions": "EMBEDDING_DIMENSIONS",
                  "chunk_max_tokens": "CHUNK_MAX_TOKENS", "chunk_overlap_tokens": "CHUNK_OVERLAP_TOKENS",
                  "text_cleanup": "TEXT_CLEANUP", "chunker_version": "the chunker's version",
                  "cleanup_version": "the cleanup's version", "tokenizer": "the tokenizer"}


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__


def _import_chromadb():
    """chromadb and its Settings. chromadb reads settings of its own from the environment (and from
    .env in the working directory) as it is imported: an invalid one (CHROMA_SERVER_HTTP_PORT=abc)
    is a ConfigError that names it, not a traceback."""
    try:
        import chromadb
        from chromadb.config import Settings

        return chromadb, Settings(anonymized_telemetry=False)
    except ValueError as e:  # pydantic's ValidationError, raised by chromadb's Settings
        if not callable(getattr(e, "errors", None)):
            raise
        bad = "; ".join(f"{'.'.join(map(str, x.get('loc', ()))).upper()}={x.get('input')!r}: {x.get('msg')}"
                        for x in e.errors())
        raise ConfigError(f"chromadb refused a setting of its own, read from the environment or from .env in the "
                          f"working directory ({bad}): correct it, or unset it to use chromadb's default") from None


def _server_settings(cfg: Config) -> str:
    return f"CHROMA_HOST={cfg.chroma_host}, CHROMA_PORT={cfg.chroma_port}, CHROMA_SSL={str(cfg.chroma_ssl).lower()}"


def _cloud_settings(cfg: Config) -> str:
    return (f"CHROMA_API_KEY set, CHROMA_TENANT={cfg.chroma_tenant or '(unset)'}, "
            f"CHROMA_DATABASE={cfg.chroma_database or '(unset)'}")


def make_client(cfg: Config):
    """A Chroma client for the configured mode; embedded mode creates the folder."""
    chromadb, settings = _import_chromadb()
    try:
        if cfg.chroma_api_key:
            return chromadb.CloudClient(tenant=cfg.chroma_tenant, database=cfg.chroma_database,
                                        api_key=cfg.chroma_api_key, settings=settings)
        if cfg.chroma_host:
            headers = {"Authorization": f"Bearer {cfg.chroma_auth_token}"} if cfg.chroma_auth_token else None
            return chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, ssl=cfg.chroma_ssl,
                                       headers=headers, settings=settings)
        cfg.chroma_path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(cfg.chroma_path), settings=settings)
    except Exception as e:  # remote clients check the server at once
        if cfg.chroma_api_key:
            raise StoreError(f"cannot reach Chroma Cloud ({_cloud_settings(cfg)}): {_why(e)}; check the network "
                             "(this machine must reach Chroma Cloud over https) and that CHROMA_API_KEY, "
                             "CHROMA_TENANT and CHROMA_DATABASE are those of your Chroma Cloud database") from None
        if cfg.chroma_host:
            raise StoreError(f"cannot reach the Chroma server at {cfg.store_address} ({_server_settings(cfg)}): "
                             f"{_why(e)}; check that a Chroma server is running at that address and that the "
                             "network lets this machine reach it (CHROMA_SSL: https or not)") from None
        raise StoreError(f"cannot open the embedded store at CHROMA_PATH={cfg.chroma_path}: {_why(e)}") from None


def _space(col) -> str:
    config = getattr(col, "configuration_json", None) or {}
    space = (config.get("hnsw") or {}).get("space") or (col.metadata or {}).get("hnsw:space")
    return space or "l2"


class Store:
    """An open store, checked against the settings. Use as a context manager (the embedded lock).

    check: "write" refuses a collection made elsewhere or with other settings (before anything
    is created); "read" one of ours made with another model (a query must embed alike);
    "ours" only one made elsewhere (the optimizer); None checks nothing (status)."""

    def __init__(self, cfg: Config, wait: bool = True, check: str | None = "write", create: bool = True):
        self.cfg = cfg
        self._lock_fd = None
        self.stamped = False
        self.opened_count = 0  # records in the chunks collection when opened (counted once: at 620k 0.06 s warm, seconds cold)
        self.broken = ""  # why the store cannot be used any more in this process
        if not cfg.remote_store:
            self._lock(wait, brief=check in (None, "read"))
        try:
            self.client = make_client(cfg)
            self.max_batch = self.call(self.client.get_max_batch_size)
            if check == "write":
                self.room()
            existing = self._get_collection(cfg.chroma_collection)
            self.opened_count = self.call(existing.count) if existing is not None else 0
            if existing is not None and check:
                self._check(existing, check)
            if existing is None and not create:
                self.chunks = self.files = self.leases = None
                return
            self.chunks = existing if existing is not None else self.call(
                self.client.get_or_create_collection, cfg.chroma_collection,
                metadata={"hnsw:space": "cosine"}, embedding_function=None)
            self.stamped = (self.chunks.metadata or {}).get("made_by") == MADE_BY and bool(self.opened_count)
            self.files = self._side(cfg.chroma_collection + "_files")
            self.leases = self._side(cfg.chroma_collection + "_leases") if cfg.remote_store else None
            if not cfg.remote_store and check in ("write", "ours"):
                chroma_sqlite.ensure(cfg.chroma_path)  # lookups by metadata that do not read the whole store
        except BaseException:
            self.close()
            raise

    # ---- opening -----------------------------------------------------------------
    def _lock(self, wait: bool, brief: bool) -> None:
        """Hold CHROMA_PATH/.ingestion.lock while open; the file says who holds it ("reads PID": a
        brief reader such as --status or a query; "writes PID"). wait=False still waits for a reader
        (up to READER_WAIT seconds): a status look must not cost a cron run."""
        path = self.cfg.chroma_path / ".ingestion.lock"
        try:
            self.cfg.chroma_path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot use CHROMA_PATH={self.cfg.chroma_path} as the embedded store's folder: "
                             f"{e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait:
                log.info("waiting for the embedded store %s (another process is using it)", self.cfg.chroma_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            elif not self._reader_left(fd):
                os.close(fd)
                raise StoreBusy(f"the embedded store {self.cfg.chroma_path} is in use by another process (a worker "
                                f"holds it for its whole run): nothing to do until it ends") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{'reads' if brief else 'writes'} {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    @staticmethod
    def _reader_left(fd: int) -> bool:
        """The lock is held by a brief reader: wait for it (True once we hold the lock)."""
        end = time.monotonic() + READER_WAIT
        while time.monotonic() < end:
            try:
                if not os.pread(fd, 64, 0).startswith(b"reads "):
                    return False
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.1)
            except OSError:
                return False
        return False

    def _get_collection(self, name: str):
        from chromadb.errors import NotFoundError

        try:
            return self.call(self.client.get_collection, name, embedding_function=None, retry_on=(NotFoundError,))
        except NotFoundError:
            return None

    def _side(self, name: str):
        return self.call(self.client.get_or_create_collection, name, metadata={"hnsw:space": "cosine"},
                         embedding_function=None)

    def _check(self, col, mode: str) -> None:
        """Refuse a collection that this run would spoil: made elsewhere, or with other settings."""
        want = wanted_record(self.cfg)
        name = self.cfg.chroma_collection
        record = dict(col.metadata or {})
        space = _space(col)
        count = self.opened_count
        sample = self.call(col.get, limit=3, include=["embeddings"]) if count else {"ids": [], "embeddings": []}
        dims = len(sample["embeddings"][0]) if count and sample["embeddings"] is not None \
            and len(sample["embeddings"]) else None
        ours_ids = all(OUR_ID.fullmatch(i) for i in sample["ids"])
        ways = (f"use another CHROMA_COLLECTION (for example {name}_v2; this one is left as it is), "
                "or point CHROMA_PATH/CHROMA_HOST at the store it belongs to")
        if record.get("made_by") != MADE_BY and mode == "read":
            return  # a query may read any collection (its distances are named for its real space)
        if record.get("made_by") == MADE_BY and not count:
            return  # empty: nothing to spoil; the first write records this run's settings (stamp)
        if record.get("made_by") != MADE_BY and count and ours_ids and space == "cosine" and not \
                record.get("embedding_model") and dims == (want["embedding_dimensions"] or dims):
            return  # ours, its first vectors written without the record (a kill in between, before it came
            # first): the next write records it
        if record.get("made_by") != MADE_BY:
            older_ours = record.get("embedding_model") and ours_ids and space == "cosine"
            foreign = space != "cosine" or (count and not older_ours) or \
                (dims is not None and want["embedding_dimensions"] and dims != want["embedding_dimensions"])
            if foreign:
                size = f"{count:,} records of {dims} dimensions" if count else "no records"
                raise StoreMismatch(
                    f"collection {name} holds {size} in {space} space made elsewhere; this run would write "
                    f"{want['embedding_dimensions']}-dimension cosine vectors: {ways}")
            if older_ours:  # made by an earlier version of this project, before the full record
                record = {k: record.get(k, want[k]) for k in ("embedding_model", "embedding_dimensions")}
                differs = [k for k in record if record[k] != want[k]]
                if differs:
                    raise StoreMismatch(self._differs_message(name, count, record, want, differs))
            return
        if mode == "ours":
            return
        keys = {"write": list(RECORD_SETTING), "read": ["embedding_model", "embedding_dimensions"], "ours": []}[mode]
        if not want["embedding_dimensions"]:  # a model we know nothing of: its vectors' size is what it gave
            keys.remove("embedding_dimensions")
        differs = [k for k in keys if record.get(k) != want[k]]
        if differs:
            raise StoreMismatch(self._differs_message(name, count, record, want, differs))

    @staticmethod
    def _differs_message(name, count, record, want, differs) -> str:
        what = ", ".join(f"{RECORD_SETTING[k]} {record.get(k)!r} (this run: {want[k]!r})" for k in differs)
        settable = [RECORD_SETTING[k] for k in differs if RECORD_SETTING[k].isupper()]
        back = f"set {', '.join(settable)} back as they were" if settable else \
            "re-ingest into a new collection (the cutting rules changed)"
        return (f"collection {name} ({count:,} records) was made with {what}; mixing them would spoil it: "
                f"{back}, or use another CHROMA_COLLECTION (for example {name}_v2) for the new settings")

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- every Chroma call -------------------------------------------------------------
    def call(self, fn: Callable, *args, retry_on: tuple = (), **kwargs):
        """fn(*args, **kwargs), retried with backoff; a lasting failure is a StoreError.

        A call that does not answer within CHROMA_TIMEOUT seconds (Chroma can hang on a
        full disk), or keeps failing through its retries (a server gone), makes the store
        unusable for this process: later calls fail at once.
        retry_on: exceptions that are an answer, not a failure (raised at once)."""
        from chromadb.errors import InvalidArgumentError

        for attempt, pause in enumerate((*RETRIES, None)):
            if self.broken:
                raise StoreError(self.broken)
            try:
                return self._answer(fn, args, kwargs)
            except retry_on:
                raise
            except InvalidArgumentError as e:  # refused for good (a vector of another size, say)
                raise StoreError(f"the store refused the write: {_why(e)}") from None
            except Exception as e:
                if pause is None:  # a run stops on it: later calls (a release, paid vectors kept) fail at
                    # once rather than spend their own retries on a store that is gone
                    self.broken = f"the store kept failing ({_why(e)}) after {len(RETRIES)} retries: {self._where()}"
                    raise StoreError(self.broken) from None
                log.warning("store call failed (%s); retrying in %.1fs", _why(e), pause)
                time.sleep(pause)

    def _answer(self, fn: Callable, args, kwargs):
        """fn's result, waiting at most CHROMA_TIMEOUT seconds for it."""
        box: dict = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                box["error"] = e
            done.set()

        threading.Thread(target=target, daemon=True, name="store-call").start()
        if not done.wait(self.cfg.chroma_timeout):
            self.broken = (f"the store did not answer within CHROMA_TIMEOUT={self.cfg.chroma_timeout}s: "
                           f"{self._where()}")
            raise StoreError(self.broken)
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _where(self) -> str:
        if self.cfg.chroma_api_key:
            return f"check Chroma Cloud ({_cloud_settings(self.cfg)}) and the network"
        if self.cfg.remote_store:
            return (f"check the Chroma server at {self.cfg.store_address} ({_server_settings(self.cfg)}): "
                    "that it is running, and the network")
        return f"check CHROMA_PATH={self.cfg.chroma_path} (free disk space, permissions)"

    def pages(self, collection=None, include=("metadatas",), where: dict | None = None) -> Iterator[dict]:
        """A collection (default: the chunks), one page of PAGE records at a time.

        A whole collection is listed by id: its ids first (one call), then each page by its ids. Chroma
        reaches a page at an offset by reading every record before it (a page of 1,000 at offset 300,000
        costs 0.65 s against 0.06 s by id), so pages by offset would cost the square of the store's size.
        A filtered listing (a few records) pages by offset."""
        collection = collection if collection is not None else self.chunks
        if where is None:
            ids = self.call(collection.get, include=[])["ids"]
            for n in range(0, len(ids), PAGE):  # (none for an empty collection: ids=[] would mean every id)
                yield self.call(collection.get, ids=ids[n:n + PAGE], include=list(include))
            return
        offset = 0
        while True:
            page = self.call(collection.get, where=where, include=list(include), limit=PAGE, offset=offset)
            yield page
            if len(page["ids"]) < PAGE:
                return
            offset += PAGE

    # ---- the collection's record ---------------------------------------------------------
    def stamp(self, dimensions: int) -> None:
        """Record how the collection was made: called before its first write."""
        if not self.stamped:
            self.call(self.chunks.modify, metadata={**wanted_record(self.cfg), "embedding_dimensions": dimensions})
            self.stamped = True

    def record(self) -> dict:
        return dict(self.chunks.metadata or {}) if self.chunks is not None else {}

    def space(self) -> str:
        return _space(self.chunks)

    # ---- chunks ----------------------------------------------------------------
    def metadata_of_source(self, source: str) -> dict[str, dict]:
        """id -> metadata of every chunk whose source is this file (one lookup per file)."""
        out: dict[str, dict] = {}
        for page in self.pages(where={"source": source}):
            out.update(zip(page["ids"], page["metadatas"]))
        return out

    def embeddings_by_content(self, content_hashes: list[str]) -> dict:
        """content_sha256 -> a stored embedding of the same text (from any source)."""
        if not content_hashes:
            return {}
        # ids first, then one embedding a text: a text stored for thousands of sources (a boilerplate
        # paragraph, before optimize_chromadb.py dedupes) would otherwise bring back thousands of vectors
        # (an id ends with its text's hash: hashing.chunk_id)
        ids = self.call(self.chunks.get, where={"content_sha256": {"$in": sorted(set(content_hashes))}},
                        include=[])["ids"]
        one: dict[str, str] = {}
        for i in ids:
            one.setdefault(i.rsplit("-", 1)[-1] if OUR_ID.fullmatch(i) else i, i)
        if not one:
            return {}
        found = self.call(self.chunks.get, ids=sorted(one.values()), include=["metadatas", "embeddings"])
        return {m["content_sha256"]: e for m, e in zip(found["metadatas"], found["embeddings"])}  # float32 arrays

    def room(self, nbytes: int = 0) -> None:
        """Embedded mode: refuse to write when the disk is (nearly) full. Chroma's embedded
        writes can hang on a full disk instead of failing, so this is checked before each write."""
        if self.cfg.remote_store:
            return
        try:
            st = os.statvfs(self.cfg.chroma_path)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE_BYTES + 3 * nbytes:
            raise StoreError(f"the disk under CHROMA_PATH={self.cfg.chroma_path} is full ({free / 2**20:.1f} MB free, "
                             f"{MIN_FREE_BYTES // 2**20} MB needed to write safely): free some space or move the store")

    def add(self, ids, embeddings, documents, metadatas) -> None:
        if ids:
            self.room(len(ids) * (len(embeddings[0]) * 8 + 4096))
            self.stamp(len(embeddings[0]))  # before the first vectors: a kill between the two must not leave
            # vectors without the record (the collection would be refused as made elsewhere ever after)
        for i in range(0, len(ids), self.max_batch):
            s = slice(i, i + self.max_batch)
            self.call(self.chunks.upsert, ids=ids[s], embeddings=embeddings[s], documents=documents[s],
                      metadatas=metadatas[s])

    def update_metadata(self, ids: list[str], metadatas: list[dict]) -> None:
        for i in range(0, len(ids), self.max_batch):
            self.call(self.chunks.update, ids=ids[i:i + self.max_batch], metadatas=metadatas[i:i + self.max_batch])

    def delete(self, ids: list[str]) -> None:
        for i in range(0, len(ids), self.max_batch):
            self.call(self.chunks.delete, ids=ids[i:i + self.max_batch])

    def get(self, ids: list[str], include=("documents", "metadatas")) -> dict:
        return self.call(self.chunks.get, ids=ids, include=list(include))

    def any_where(self, where: dict) -> bool:
        return bool(self.call(self.chunks.get, where=where, limit=1, include=[])["ids"])

    def query(self, vector: list[float], k: int, where: dict | None = None) -> dict:
        return self.call(self.chunks.query, query_embeddings=[vector], n_results=k, where=where,
                         include=["documents", "metadatas", "distances"])

    def remove_stale(self, source: str, keep: set[str], stored: dict[str, dict] | None = None) -> int:
        """Delete chunks of source that are not in keep; returns how many went.

        A stale chunk that stands for other sources too (after deduplication) is
        handed over to them instead of deleted, so their text stays stored.
        stored: id -> metadata of the source's chunks, when the caller already looked them up."""
        stored = self.metadata_of_source(source) if stored is None else stored
        stale = [(i, m) for i, m in stored.items() if i not in keep]
        delete = [i for i, m in stale if not m.get("also_sources")]
        for i, m in stale:
            others = m.get("also_sources")
            if others:
                self.update_metadata([i], [{"source": others[0], "also_sources": others[1:] or None}])
        self.delete(delete)
        return len(delete)

    def count(self) -> int:
        return self.call(self.chunks.count) if self.chunks is not None else 0

    # ---- files -----------------------------------------------------------------
    def mark_done(self, source: str, file_sha256: str, chunks: int, tokens: int) -> None:
        """Record that source, with this content, is fully stored."""
        angle = int(file_sha256[:8], 16) / 0xFFFFFFFF * 2 * math.pi  # distinct tiny vectors
        self.call(self.files.upsert, ids=[source_key(source)], embeddings=[[math.cos(angle), math.sin(angle)]],
                  documents=[source], metadatas=[{"source": source, "file_sha256": file_sha256,
                                                  "chunks": chunks, "tokens": tokens}])

    def forget_file(self, source: str) -> None:
        self.call(self.files.delete, ids=[source_key(source)])

    def done_files(self) -> dict[str, dict]:
        """source -> its record, for every file recorded as fully stored."""
        if self.files is None:
            return {}
        out: dict[str, dict] = {}
        for page in self.pages(self.files):
            for m in page["metadatas"]:
                out[m["source"]] = m
        return out

    def files_count(self) -> int:
        return self.call(self.files.count) if self.files is not None else 0

    # ---- leases (shared stores only): storage/leases.py ------------------------
    def claim(self, source: str, owner: str, seconds: float) -> str | None:
        """Take source for owner in the shared store; returns the other owner when it is taken."""
        return leases.claim(self, source, owner, seconds)

    def renew(self, source: str, owner: str, seconds: float) -> None:
        leases.renew(self, source, owner, seconds)

    def unclaim(self, source: str, owner: str) -> None:
        leases.unclaim(self, source, owner)


def check_store(cfg: Config, mode: str = "write", wait: bool = True) -> None:
    """Open the store once and check it against the settings, before anything is claimed or paid.
    wait=False: an embedded store another process holds is StoreBusy at once."""
    with Store(cfg, wait=wait, check=mode, create=False):
        pass

