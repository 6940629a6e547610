#!/usr/bin/env python3
"""CPU of Chroma's embedded upsert by call size: the same vectors in calls of N records.

    python3 bench/upsert_cost.py [--vectors 2200] [--dims 1536] [--sizes 44,88,176] [--metadata ours|one]

Writes VECTORS random vectors into a new collection, SIZE records a call, with the
project's chunk metadata (10 keys) or LangChain's (one key), and prints the process's
CPU (all threads: Chroma's SQLite and HNSW work runs in its own Rust threads). What it
showed (2026-11-30, chromadb 1.5.9, this machine; 2,200 vectors of 1536 dimensions, our
metadata): 6.1 CPU-s in calls of 44, 5.3 in calls of 88, 4.3 in calls of 176 (2,112
vectors), so ~35 ms a call beyond its vectors; at 2 dimensions (`--dims 2 --sizes 44`),
68 ms a 44-record call with our metadata against 46 ms with one key (`--metadata one`).
"""
import argparse
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingestion.storage import schema  # noqa: E402  (the metadata the pipeline writes)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def metadata(kind: str, call: int, k: int) -> dict:
    if kind == "one":
        return {"source": f"/tx/{call}.txt"}
    return schema.chunk_metadata(f"/tx/{call}.txt", k, 258, os.urandom(32).hex(), "e2d9" * 16, "", "",
                                 ["JUSTICE GINSBURG"], "utf-8", 1796003469)


def run(vectors: int, dims: int, size: int, kind: str) -> float:
    import chromadb
    from chromadb.config import Settings

    folder = tempfile.mkdtemp(prefix="upsert-cost-")
    try:
        client = chromadb.PersistentClient(folder, settings=Settings(anonymized_telemetry=False))
        col = client.get_or_create_collection("chunks", metadata={"hnsw:space": "cosine"}, embedding_function=None)
        rnd = np.random.default_rng(0)
        start = cpu()
        for call in range(vectors // size):
            col.upsert(ids=[f"{call}-{k}" for k in range(size)],
                       embeddings=rnd.random((size, dims), dtype=np.float32) - 0.5,
                       documents=["d" * 1300] * size, metadatas=[metadata(kind, call, k) for k in range(size)])
        return cpu() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=2200)
    ap.add_argument("--dims", type=int, default=1536)
    ap.add_argument("--sizes", default="44,88,176")
    ap.add_argument("--metadata", choices=["ours", "one"], default="ours")
    args = ap.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        calls = args.vectors // size
        took = run(args.vectors, args.dims, size, args.metadata)
        print(f"{calls} calls of {size} ({calls * size} vectors, {args.dims} dims, metadata {args.metadata}): "
              f"{took:.2f} CPU-s, {took / calls * 1000:.1f} ms a call", flush=True)


if __name__ == "__main__":
    main()
