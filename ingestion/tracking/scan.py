"""Building and refreshing the queue from the transcripts folder (generate_file_queue.py).

A file is new or changed when its size or mtime differ from what was recorded and
its content hash differs too (a touched but unchanged file stays done). Finished
files are known from the checkpoint, else from the store's record of finished
files, so a lost queue or checkpoint never costs a re-embedding.

The queue follows the collection: a queue and checkpoint that describe another
store or collection are set aside (renamed with the collection's name) and built
again from the folder and this collection's own record of finished files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ingestion.common.errors import ConfigError
from ingestion.common.hashing import file_sha256, sha256_text
from ingestion.common.settings import Config
from ingestion.text import file_chunks, textfile
from ingestion.tracking import checkpoint, file_queue, paths, state

log = logging.getLogger("ingestion")


@dataclass
class Summary:
    found: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    in_progress: int = 0
    found_in_store: int = 0
    retried: int = 0
    gone: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def line(self, q: dict) -> str:
        c = file_queue.counts(q)
        extra = f", {self.found_in_store} already in the store" if self.found_in_store else ""
        extra += f", {self.retried} failed requeued" if self.retried else ""
        extra += f", {len(self.skipped)} skipped" if self.skipped else ""
        extra += f", {len(self.gone)} gone from disk (generate_file_queue.py --prune removes them)" \
            if self.gone else ""
        return (f"queue: {self.found} files found: {self.new} new, {self.changed} changed, "
                f"{self.unchanged} unchanged, {self.in_progress} in progress{extra}; "
                f"pending {c['pending']}, processing {c['processing']}, completed {c['completed']}, "
                f"failed {c['failed']}")


def walk(cfg: Config, summary: Summary) -> Iterator[tuple[str, os.stat_result]]:
    """Every *.txt under TRANSCRIPTS_DIR (of this WORKER_SHARD) that may be read, sorted;
    symlinks only when they stay inside."""
    root = cfg.transcripts_dir
    in_shard = paths.shard_filter(cfg)

    def on_error(e: OSError) -> None:
        summary.skipped.append((e.filename, f"cannot list folder: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(".txt"):
                continue
            path = os.path.join(dirpath, name)
            if not in_shard(path):
                continue
            if not textfile.is_allowed(Path(path), [root]):
                summary.skipped.append((path, "symlink to outside TRANSCRIPTS_DIR, or a loop"))
                continue
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                summary.skipped.append((path, "file name is not valid UTF-8: rename it"))
                continue
            try:
                st = os.stat(path)
            except OSError as e:
                summary.skipped.append((path, f"cannot stat: {e.strerror}"))
                continue
            yield path, st


def _same_stat(record: dict, st: os.stat_result) -> bool:
    return record.get("size") == st.st_size and record.get("mtime") == st.st_mtime


def _store_records(cfg: Config) -> dict[str, dict]:
    """Files the store records as finished; {} when there is no store yet."""
    if not cfg.remote_store and not cfg.chroma_path.exists():
        return {}
    from ingestion.storage.store import Store

    with Store(cfg, check=None, create=False) as store:
        return store.done_files()


# ---- the queue follows the collection --------------------------------------------------------
def set_aside_if_other(cfg: Config) -> None:
    """A queue and checkpoint that describe another store or collection are renamed out of the way."""
    with state.transaction(cfg) as (q, c):
        recorded = file_queue.store_of(q) or checkpoint.store_of(c)
        ours = {"address": cfg.store_address, "collection": cfg.chroma_collection}
        if recorded is None and cfg.queue_path.exists():  # a queue of an earlier version: this collection's
            file_queue.set_store(q, **ours)
            checkpoint.set_store(c, **ours)
    if recorded in (None, ours):
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for p in (cfg.queue_path, cfg.checkpoint_path):
        if p.exists():
            os.replace(p, p.with_name(f"{p.stem}.{recorded.get('collection')}.{stamp}.json"))
    log.warning("the queue and checkpoint described collection %s at %s; set aside as *.%s.%s.json, "
                "rebuilt for collection %s at %s", recorded.get("collection"), recorded.get("address"),
                recorded.get("collection"), stamp, cfg.chroma_collection, cfg.store_address)


def ensure_queue(cfg: Config) -> None:
    """A queue for this store and collection: built when missing, rebuilt when it describes another."""
    set_aside_if_other(cfg)
    if not cfg.queue_path.exists():
        summary, q = refresh(cfg)
        print(summary.line(q))


@contextlib.contextmanager
def _snapshot(cfg: Config):
    """Like state.transaction, but nothing is written back (dry runs)."""
    yield state.read(cfg)


def refresh(cfg: Config, retry_failed: bool = False, dry_run: bool = False) -> tuple[Summary, dict]:
    """Merge the folder into the queue and checkpoint; returns the summary and the new queue.

    dry_run: work out the same result without writing anything."""
    summary = Summary()
    files = list(walk(cfg, summary))  # stat results only: small even for 100k files
    summary.found = len(files)
    q, c = state.read(cfg)
    unknown = [p for p, _ in files if checkpoint.done(c, p) is None and file_queue.where(q, p) is None]
    stored = _store_records(cfg) if unknown else {}
    on_disk = set()
    with (_snapshot(cfg) if dry_run else state.transaction(cfg)) as (q, c):
        file_queue.set_store(q, cfg.store_address, cfg.chroma_collection)
        checkpoint.set_store(c, cfg.store_address, cfg.chroma_collection)
        file_queue.normalise(q, cfg.allowed_roots)
        for path, st in files:
            on_disk.add(path)
            _merge(q, c, path, st, stored, summary)
        for path in file_queue.paths(q, file_queue.PENDING) + file_queue.paths(q, file_queue.FAILED) + \
                file_queue.paths(q, file_queue.COMPLETED):
            if path in on_disk or file_queue.is_part(q, path):
                continue
            if not os.path.lexists(path):
                summary.gone.append(path)
                if file_queue.where(q, path) == file_queue.PENDING:
                    file_queue.move(q, path, None)
        if retry_failed:
            for path in file_queue.paths(q, file_queue.FAILED):
                if os.path.exists(path):
                    file_queue.requeue(q, path)
                    checkpoint.forget_failure(c, file_queue.original_of(q, path))
                    summary.retried += 1
    return summary, q


def _merge(q: dict, c: dict, path: str, st: os.stat_result, stored: dict, summary: Summary) -> None:
    where = file_queue.where(q, path)
    entry = file_queue.details(q, path)
    if where == file_queue.PROCESSING or (entry.get("parts") and _same_stat(entry, st)):
        summary.in_progress += 1
        return
    if entry.get("parts"):  # changed while its parts were being ingested: start over
        file_queue.drop_parts(q, path)
    done = checkpoint.done(c, path)
    if done is None and path in stored and (sha := file_sha256(path)) == stored[path].get("file_sha256"):
        checkpoint.record_done(c, path, file_sha256=sha, size=st.st_size, mtime=st.st_mtime,
                               chunks=stored[path].get("chunks"), tokens=stored[path].get("tokens"),
                               found_in_store=True)
        file_queue.complete(q, path)
        summary.found_in_store += 1
        return
    if done is not None:
        if not _same_stat(done, st):
            sha = file_sha256(path)
            if sha != done.get("file_sha256"):
                checkpoint.forget(c, path)
                file_queue.note(q, path, size=st.st_size, mtime=st.st_mtime, sha256=sha)
                file_queue.requeue(q, path)
                summary.changed += 1
                return
            checkpoint.touch(c, path, st.st_size, st.st_mtime)  # touched, not changed
        if where != file_queue.COMPLETED:
            file_queue.complete(q, path)
        summary.unchanged += 1
        return
    if where == file_queue.FAILED:
        if entry.get("size") is not None and not _same_stat(entry, st):
            file_queue.note(q, path, size=st.st_size, mtime=st.st_mtime)
            file_queue.requeue(q, path)
            summary.changed += 1
        else:
            summary.unchanged += 1
        return
    if where in (file_queue.PENDING, file_queue.COMPLETED):
        summary.unchanged += 1
        return
    file_queue.note(q, path, size=st.st_size, mtime=st.st_mtime)
    file_queue.move(q, path, file_queue.PENDING)
    summary.new += 1


# ---- transcripts deleted from the folder -------------------------------------------------------
@dataclass
class Pruned:
    files: list[str] = field(default_factory=list)
    chunks: int = 0
    handed_over: int = 0   # chunks that stood for other sources too: kept for them


def prune(cfg: Config, dry_run: bool, force: bool) -> Pruned:
    """Remove what the queue, checkpoint and store hold of transcripts no longer in the folder."""
    from ingestion.storage.store import Store

    summary = Summary()
    on_disk = {p for p, _ in walk(cfg, summary)}
    q, c = state.read(cfg)
    with Store(cfg, check="write", create=False) as store:
        recorded = store.done_files()
        known = {p for p in set(recorded) | set(checkpoint.done_files(c)) | set(file_queue.known(q))
                 if not file_queue.is_part(q, p) and paths.shard_filter(cfg)(p)}
        gone = sorted(p for p in known if p not in on_disk and not os.path.lexists(p))
        if gone and not on_disk and not force:
            raise ConfigError(f"every one of the {len(known)} known transcripts is gone from {cfg.transcripts_dir}: "
                              "a folder unmounted or emptied by mistake? Nothing removed; add --force if you "
                              "really mean to empty the store")
        result = Pruned(files=gone)
        gone_set = set(gone)
        for source in gone:
            stored = store.metadata_of_source(source) if store.chunks is not None else {}
            result.chunks += sum(1 for m in stored.values() if not m.get("also_sources"))
            result.handed_over += sum(1 for m in stored.values() if m.get("also_sources"))
            if not dry_run:
                store.remove_stale(source, set(), stored)
                store.forget_file(source)
        if not dry_run and gone and store.chunks is not None:  # survivors that also stood for a gone file
            for page in store.pages(include=("metadatas",)):
                ids, metas = [], []
                for cid, m in zip(page["ids"], page["metadatas"]):
                    also = m.get("also_sources") or []
                    if gone_set & set(also):
                        ids.append(cid)
                        metas.append({"also_sources": [s for s in also if s not in gone_set] or None})
                store.update_metadata(ids, metas)
    if not dry_run and gone:
        with state.transaction(cfg) as (q, c):
            for source in gone:
                file_queue.forget(q, source)
                checkpoint.forget(c, source)
    return result


# ---- the dry run's estimate ---------------------------------------------------------------------
def estimate_tokens(cfg: Config, todo: list[str], progress=None) -> tuple[int, int, int, list[tuple[str, str]]]:
    """Tokens and chunks the given files would send, cut exactly as ingestion cuts them (no API call).

    Returns (tokens, chunks, tokens cleanup saved, [(path, why)] for files that could not be read)."""
    from dataclasses import replace

    tokens = chunks = saved = 0
    unreadable = []
    seen: set[str] = set()  # identical chunk texts are embedded once
    raw_cfg = replace(cfg, text_cleanup="off")
    for path in todo:
        try:
            info = textfile.inspect(Path(path))
            report = file_chunks.CleanupReport()
            file_tokens = 0
            for cut in file_chunks.file_chunks(cfg, Path(path), info, report):
                key = sha256_text(cut.chunk.text)
                chunks += 1
                file_tokens += cut.chunk.token_count
                if key not in seen:
                    seen.add(key)
                    tokens += cut.chunk.token_count
            if report.cleaned:
                saved += sum(cut.chunk.token_count for cut in file_chunks.file_chunks(raw_cfg, Path(path), info)) \
                    - file_tokens
        except (textfile.FileRejected, textfile.FileChanged) as e:
            unreadable.append((path, str(e)))
        if progress:
            progress(1)
    return tokens, chunks, saved, unreadable
