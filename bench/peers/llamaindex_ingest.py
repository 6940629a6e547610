#!/usr/bin/env python3
"""LlamaIndex contender: SimpleDirectoryReader -> IngestionPipeline(TokenTextSplitter,
OpenAIEmbedding) -> ChromaVectorStore.

    llamaindex_ingest.py CORPUS_DIR CHROMA_DIR BASE_URL API_KEY

Written the way the LlamaIndex docs show it: no docstore and no cache, so a
second run embeds and adds everything again. Defaults left as they are:
embed_batch_size=100, max_retries=10, num_workers=None (sequential), and
TokenTextSplitter's metadata-aware splitting (the file metadata LlamaIndex
attaches counts against chunk_size, so text chunks come out a bit under 500).
The reader loads the whole corpus into memory before the pipeline starts.

--files-per-run N (default 0: the whole corpus in one pipeline.run, as the docs
show): with llama-index-vector-stores-chroma 0.6.0 and chromadb 1.5.9 one run over
more than ~80 of our files fails AFTER embedding everything: ChromaVectorStore.add
sends up to 41,665 nodes in one collection.add (its MAX_CHUNK_SIZE) but this
Chroma takes at most 5,461 ("Batch size of 13726 is greater than max batch size
of 5461"), so nothing is stored. The user's workaround is to run the pipeline on
slices of the documents, which is what N > 0 does (the benchmark uses 20).
Runs in its own venv (bench/work/venv-llamaindex); needs TIKTOKEN_CACHE_DIR offline.
"""
import argparse
import json
import sys
import time

import chromadb
from chromadb.config import Settings
from llama_index.core import SimpleDirectoryReader
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import TokenTextSplitter
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.vector_stores.chroma import ChromaVectorStore


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("chroma_dir")
    ap.add_argument("base_url")
    ap.add_argument("api_key")
    ap.add_argument("--collection", default="transcripts")
    ap.add_argument("--files-per-run", type=int, default=0,
                    help="call pipeline.run on slices of this many documents (0: all at once)")
    args = ap.parse_args()

    client = chromadb.PersistentClient(path=args.chroma_dir, settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection(args.collection, metadata={"hnsw:space": "cosine"})
    pipeline = IngestionPipeline(
        transformations=[
            TokenTextSplitter(chunk_size=500, chunk_overlap=50),
            OpenAIEmbedding(model="text-embedding-3-small", api_base=args.base_url, api_key=args.api_key),
        ],
        vector_store=ChromaVectorStore(chroma_collection=collection),
    )
    started = time.monotonic()
    documents = SimpleDirectoryReader(args.corpus, recursive=True, required_exts=[".txt"]).load_data()
    step = args.files_per_run or len(documents) or 1
    added = 0
    for i in range(0, len(documents), step):
        added += len(pipeline.run(documents=documents[i:i + step]))
    print(json.dumps({"files": len(documents), "chunks_added": added, "files_per_run": step,
                      "seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
