#!/usr/bin/env python3
"""Open a Chroma directory after a run and describe what is stored.

    count_store.py CHROMA_DIR [--collection transcripts]

Prints JSON: every collection's record count, and for the chunk collection the
number of records, of distinct documents (the rest are duplicates), and the
cl100k_base token counts of the stored documents (mean, max, how many > 500).
Runs with any Python that has chromadb and tiktoken (each contender's own venv).
"""
import argparse
import hashlib
import json
import sys

import chromadb
import tiktoken
from chromadb.config import Settings

PAGE = 5000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("chroma_dir")
    ap.add_argument("--collection", default="transcripts")
    ap.add_argument("--limit", type=int, default=500, help="token bound to check chunks against")
    args = ap.parse_args()
    client = chromadb.PersistentClient(path=args.chroma_dir, settings=Settings(anonymized_telemetry=False))
    collections = {c.name: c.count() for c in (client.get_collection(n if isinstance(n, str) else n.name)
                                               for n in client.list_collections())}
    out = {"collections": collections}
    if args.collection in collections:
        col = client.get_collection(args.collection)
        enc = tiktoken.get_encoding("cl100k_base")
        hashes, counts, offset = set(), [], 0
        while True:
            page = col.get(include=["documents"], limit=PAGE, offset=offset)
            docs = page["documents"] or []
            for d in docs:
                d = d or ""
                hashes.add(hashlib.sha256(d.encode("utf-8", "surrogatepass")).digest())
            counts.extend(len(t) for t in enc.encode_ordinary_batch([d or "" for d in docs]))
            if len(page["ids"]) < PAGE:
                break
            offset += PAGE
        out.update(chunks=len(counts), distinct=len(hashes), duplicates=len(counts) - len(hashes),
                   tokens_total=sum(counts), tokens_mean=round(sum(counts) / len(counts), 1) if counts else 0,
                   tokens_max=max(counts, default=0), over_limit=sum(1 for n in counts if n > args.limit))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
