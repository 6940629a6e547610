#!/usr/bin/env python3
"""The floor: the least work any pipeline must do on this corpus, timed step by step.

    floor.py CORPUS_DIR CHROMA_DIR [--base-url URL --api-key KEY] [--chunk 500 --overlap 50]

1. read: read every .txt file (UTF-8);
2. tokenize: tiktoken cl100k_base over all the text (encode_ordinary, one call a file);
3. write: as many vectors as 500-token windows with 50 overlap (random 1536-d
   float32, with the window's text as the document), into a fresh embedded Chroma
   collection (cosine), in batches of the client's max batch size;
4. server (only with --base-url): the local embeddings server answering all those
   windows at zero latency, 100 inputs a request, one request at a time: the cost
   of the stand-in API itself, which every contender pays at zero latency.

Building the windows' text (decoding tokens) and the random vectors is not timed.
Prints JSON. Runs with the project's Python (chromadb, tiktoken, numpy, openai).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import chromadb
import numpy as np
import tiktoken
from chromadb.config import Settings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("chroma_dir")
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--overlap", type=int, default=50)
    ap.add_argument("--dims", type=int, default=1536)
    ap.add_argument("--base-url")
    ap.add_argument("--api-key", default="sk-local-any-key")
    args = ap.parse_args()
    out = {}

    t0 = time.perf_counter()
    texts = [(str(p), p.read_text(encoding="utf-8")) for p in sorted(Path(args.corpus).rglob("*.txt"))]
    out["read_s"] = time.perf_counter() - t0
    out["files"] = len(texts)
    out["bytes"] = sum(len(t.encode()) for _, t in texts)

    enc = tiktoken.get_encoding("cl100k_base")
    enc.encode_ordinary("warm up")
    t0 = time.perf_counter()
    tokens = [enc.encode_ordinary(t) for _, t in texts]
    out["tokenize_s"] = time.perf_counter() - t0
    out["tokens"] = sum(len(t) for t in tokens)

    step = args.chunk - args.overlap
    ids, docs, metas = [], [], []
    for (path, _), toks in zip(texts, tokens):
        for n, start in enumerate(range(0, max(1, len(toks) - args.overlap), step)):
            ids.append(f"{path}#{n}")
            docs.append(enc.decode(toks[start:start + args.chunk]))
            metas.append({"source": path, "chunk_index": n})
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ids), args.dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out["windows"] = len(ids)

    client = chromadb.PersistentClient(path=args.chroma_dir, settings=Settings(anonymized_telemetry=False))
    col = client.get_or_create_collection("floor", metadata={"hnsw:space": "cosine"})
    batch = client.get_max_batch_size()
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        col.add(ids=ids[i:i + batch], embeddings=vectors[i:i + batch], documents=docs[i:i + batch],
                metadatas=metas[i:i + batch])
    out["chroma_write_s"] = time.perf_counter() - t0
    out["chroma_batch"] = batch
    out["stored"] = col.count()

    if args.base_url:
        import openai
        client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=5)
        t0 = time.perf_counter()
        for i in range(0, len(docs), 100):
            client.embeddings.create(model="text-embedding-3-small", input=docs[i:i + 100])
        out["server_embed_s"] = time.perf_counter() - t0
    out["floor_s"] = out["read_s"] + out["tokenize_s"] + out["chroma_write_s"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
