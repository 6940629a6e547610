"""Making a finished collection trustworthy for RAG (optimize_chromadb.py).

Three passes over the chunks, a page at a time (memory holds one page plus a
small hash per chunk):
1. duplicates: chunks whose normalized text (case and whitespace folded) is the
   same, e.g. a transcript saved twice, keep one survivor: the chunk of the
   smallest (source, id). It lists the sources of the dropped ones in
   `also_sources`, and their files stay recorded as finished, so they are never
   embedded again;
2. metadata: required keys and types are checked; what can be derived from the
   text (token_count, content_sha256) or converted (a number stored as text) is
   fixed, the rest is listed and the chunk is flagged `rag_strict: false`;
3. flags: `rag_strict: true` and `source_only: true` on every valid chunk, without
   re-embedding anything.
A second run finds nothing to change and says so.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field

from ingestion.common.hashing import sha256_text
from ingestion.storage.schema import REQUIRED
from ingestion.storage.store import PAGE, Store
from ingestion.text.chunking import count_tokens

log = logging.getLogger("ingestion")
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Report:
    chunks: int = 0
    duplicates_removed: int = 0
    survivors_updated: int = 0
    fixed: int = 0
    flagged: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (id, what is wrong)

    @property
    def changed(self) -> bool:
        return bool(self.duplicates_removed or self.survivors_updated or self.fixed or self.flagged)

    def line(self, dry_run: bool) -> str:
        verb = "would change" if dry_run else "changed"
        if not self.changed and not self.invalid:
            return f"optimize: {self.chunks} chunks checked; nothing to change"
        return (f"optimize: {self.chunks} chunks checked; {verb}: {self.duplicates_removed} duplicates removed, "
                f"{self.survivors_updated} survivors updated, {self.fixed} metadata fixed, "
                f"{self.flagged} flagged rag_strict/source_only; {len(self.invalid)} invalid (listed)")


def normalized_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8", "surrogatepass")).hexdigest()


def optimize(store: Store, dry_run: bool = False, progress=None) -> Report:
    report = Report()
    # pass 1: group by normalized text; remember (source, id, also_sources) of each text's first chunk
    first: dict[str, tuple[str, str, list]] = {}
    members: dict[str, list[tuple[str, str, list]]] = {}
    all_ids: list[str] = []
    for page in store.pages(include=("documents", "metadatas")):
        for cid, doc, meta in zip(page["ids"], page["documents"], page["metadatas"]):
            report.chunks += 1
            all_ids.append(cid)
            if doc is None:
                continue
            h = normalized_hash(doc)
            entry = (str((meta or {}).get("source", "")), cid, list((meta or {}).get("also_sources") or []))
            if h in first:
                members.setdefault(h, [first[h]]).append(entry)
            else:
                first[h] = entry
        if progress:
            progress(len(page["ids"]))
    first.clear()
    drop: list[str] = []
    survivor_sources: dict[str, list[str]] = {}
    for group in members.values():
        keep_source, keep_id, _ = min(group, key=lambda e: (e[0], e[1]))
        sources = set()
        for source, cid, also in group:
            sources.update([source, *also])
            if cid != keep_id:
                drop.append(cid)
        sources.discard(keep_source)
        survivor_sources[keep_id] = sorted(s for s in sources if s)
    members.clear()
    report.duplicates_removed = len(drop)
    drop_set = set(drop)
    if not dry_run:
        store.delete(drop)
    # pass 2 and 3: validate, fix, flag, record survivors' other sources (by id: updates may reorder pages)
    keep_ids = [i for i in all_ids if i not in drop_set]
    for n in range(0, len(keep_ids), PAGE):
        page = store.get(keep_ids[n:n + PAGE])
        ids, metas = [], []
        for cid, doc, meta in zip(page["ids"], page["documents"], page["metadatas"]):
            update = _check(cid, doc, dict(meta or {}), survivor_sources.get(cid), report)
            if update:
                ids.append(cid)
                metas.append(update)
        if ids and not dry_run:
            store.update_metadata(ids, metas)
    return report


def _check(cid: str, doc: str | None, meta: dict, also: list[str] | None, report: Report) -> dict:
    """What to change on one chunk (empty: nothing)."""
    update: dict = {}
    problems = []
    if also is not None and sorted(set(meta.get("also_sources") or []) | set(also)) != (meta.get("also_sources") or []):
        update["also_sources"] = sorted(set(meta.get("also_sources") or []) | set(also))
        report.survivors_updated += 1
    fixable = False
    for key, kind in REQUIRED.items():
        value = meta.get(key)
        if isinstance(value, kind) and not isinstance(value, bool) and value != "":
            continue
        if key == "chunk_index" and isinstance(value, (str, float)) and str(value).replace(".0", "").isdigit():
            update[key] = int(float(value))
        elif key == "token_count" and doc:
            update[key] = count_tokens(doc)
        elif key == "content_sha256" and doc:
            update[key] = sha256_text(doc)
        else:
            problems.append(f"{key} missing or not {kind.__name__}")
            continue
        fixable = True
    if doc and isinstance(meta.get("content_sha256"), str) and meta["content_sha256"] != sha256_text(doc) \
            and "content_sha256" not in update:
        update["content_sha256"] = sha256_text(doc)
        fixable = True
    for key in ("file_sha256",):
        if isinstance(meta.get(key), str) and not HEX64.fullmatch(meta[key]):
            problems.append(f"{key} is not a sha256")
    if not doc:
        problems.append("no text")
    if fixable:
        report.fixed += 1
    valid = not problems
    if problems:
        report.invalid.append((cid, "; ".join(problems)))
    if meta.get("rag_strict") is not valid or meta.get("source_only") is not True:
        update["rag_strict"] = valid
        update["source_only"] = True
        report.flagged += 1
    return update
