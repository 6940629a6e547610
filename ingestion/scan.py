"""Building and refreshing the queue from the transcripts folder (generate_file_queue.py).

A file is new or changed when its size or mtime differ from what was recorded and
its content hash differs too (a touched but unchanged file stays done). Finished
files are known from the checkpoint, else from the store's record of finished
files, so a lost queue or checkpoint never costs a re-embedding.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ingestion import checkpoint, file_queue, state, textfile
from ingestion.errors import ConfigError
from ingestion.settings import Config, raw

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
        extra += f", {len(self.gone)} gone from disk" if self.gone else ""
        return (f"queue: {self.found} files found: {self.new} new, {self.changed} changed, "
                f"{self.unchanged} unchanged, {self.in_progress} in progress{extra}; "
                f"pending {c['pending']}, processing {c['processing']}, completed {c['completed']}, "
                f"failed {c['failed']}")


def shard_filter(spec: str | None, root: Path):
    """WORKER_SHARD=i/N: accept only paths whose hash falls in shard i (0-based) of N.

    The hash is of the path relative to TRANSCRIPTS_DIR, so machines that mount the
    corpus at different places still agree on who takes which file."""
    if not spec:
        return lambda p: True
    try:
        i, n = (int(x) for x in spec.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ConfigError(f"WORKER_SHARD must look like i/N with 0 <= i < N, got {spec!r}") from None

    def accept(path: str) -> bool:
        rel = os.path.relpath(path, root)
        return int(hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % n == i
    return accept


def walk(cfg: Config, summary: Summary) -> Iterator[tuple[str, os.stat_result]]:
    """Every *.txt under TRANSCRIPTS_DIR (of this WORKER_SHARD) that may be read, sorted;
    symlinks only when they stay inside."""
    root = cfg.transcripts_dir
    in_shard = shard_filter(raw("WORKER_SHARD"), root)

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


def file_sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _same_stat(record: dict, st: os.stat_result) -> bool:
    return record.get("size") == st.st_size and record.get("mtime") == st.st_mtime


def _store_records(cfg: Config) -> dict[str, dict]:
    """Files the store records as finished; {} when there is no store yet or it is unreachable."""
    if not cfg.chroma_host and not cfg.chroma_path.exists():
        return {}
    from ingestion.store import Store
    try:
        with Store(cfg) as store:
            return store.done_files()
    except ConfigError:  # a configured server that cannot be reached: say so
        raise
    except Exception as e:  # the queue can still be built; re-ingesting stored chunks costs no tokens
        log.warning("could not read finished files from the store (%s); treating unknown files as new",
                    str(e).splitlines()[0][:200])
        return {}


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
    unknown = [p for p, _ in files if p not in c["processed_files"] and file_queue.where(q, p) is None]
    stored = _store_records(cfg) if unknown else {}
    on_disk = set()
    with (_snapshot(cfg) if dry_run else state.transaction(cfg)) as (q, c):
        for path, st in files:
            on_disk.add(path)
            _merge(q, c, path, st, stored, summary)
        for path in list(q["pending"]) + list(q["failed"]) + list(q["completed"]):
            if path in on_disk or file_queue.info(q, path).get("part_of"):
                continue
            if not os.path.lexists(path):
                summary.gone.append(path)
                if file_queue.where(q, path) == "pending":
                    file_queue.move(q, path, None)
        if retry_failed:
            for path in list(q["failed"]):
                if os.path.exists(path):
                    file_queue.info(q, path).pop("attempts", None)
                    file_queue.move(q, path, "pending")
                    c["failed_files"].pop(file_queue.original_of(q, path), None)
                    summary.retried += 1
    return summary, q


def _merge(q: dict, c: dict, path: str, st: os.stat_result, stored: dict, summary: Summary) -> None:
    where = file_queue.where(q, path)
    entry = file_queue.info(q, path)
    if where == "processing" or (entry.get("parts") and _same_stat(entry, st)):
        summary.in_progress += 1
        return
    if entry.get("parts"):  # changed while its parts were being ingested: start over
        for part in entry.pop("parts"):
            file_queue.move(q, part, None)
            q["files"].pop(part, None)
    done = c["processed_files"].get(path)
    if done is None and path in stored and (sha := file_sha256(path)) == stored[path].get("file_sha256"):
        checkpoint.record_done(c, path, file_sha256=sha, size=st.st_size, mtime=st.st_mtime,
                               chunks=stored[path].get("chunks"), tokens=stored[path].get("tokens"),
                               found_in_store=True)
        entry.update(size=st.st_size, mtime=st.st_mtime, sha256=sha)
        file_queue.move(q, path, "completed")
        summary.found_in_store += 1
        return
    if done is not None:
        if not _same_stat(done, st):
            sha = file_sha256(path)
            if sha != done.get("file_sha256"):
                checkpoint.forget(c, path)
                entry.pop("attempts", None)
                entry.update(size=st.st_size, mtime=st.st_mtime, sha256=sha)
                file_queue.move(q, path, "pending")
                summary.changed += 1
                return
            done.update(size=st.st_size, mtime=st.st_mtime)  # touched, not changed
        if where != "completed":
            file_queue.move(q, path, "completed")
        summary.unchanged += 1
        return
    if where == "failed":
        if entry.get("size") is not None and not _same_stat(entry, st):
            entry.pop("attempts", None)
            entry.update(size=st.st_size, mtime=st.st_mtime)
            file_queue.move(q, path, "pending")
            summary.changed += 1
        else:
            summary.unchanged += 1
        return
    if where in ("pending", "completed"):
        summary.unchanged += 1
        return
    entry.update(size=st.st_size, mtime=st.st_mtime)
    file_queue.move(q, path, "pending")
    summary.new += 1


def estimate_tokens(cfg: Config, paths: list[str], progress=None) -> tuple[int, int, list[tuple[str, str]]]:
    """Tokens and chunks the given files would send, cut exactly as ingestion cuts them (no API call).

    Returns (tokens, chunks, [(path, why)] for files that could not be read)."""
    from ingestion import chunking
    from ingestion.ingest import sha256_text

    tokens = chunks = 0
    unreadable = []
    seen: set[str] = set()  # identical chunk texts are embedded once
    for path in paths:
        try:
            info = textfile.inspect(Path(path))
            for c in chunking.iter_chunks(textfile.iter_text(Path(path), info), cfg.chunk_max_tokens,
                                          cfg.chunk_overlap_tokens):
                key = sha256_text(c.text)
                chunks += 1
                if key not in seen:
                    seen.add(key)
                    tokens += c.token_count
        except (textfile.FileRejected, textfile.FileChanged) as e:
            unreadable.append((path, str(e)))
        if progress:
            progress(1)
    return tokens, chunks, unreadable
