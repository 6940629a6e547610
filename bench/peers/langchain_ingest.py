#!/usr/bin/env python3
"""LangChain contender: one file at a time -> split -> OpenAIEmbeddings -> langchain_chroma.

    langchain_ingest.py CORPUS_DIR CHROMA_DIR BASE_URL API_KEY [--check-ctx true|false]

Written the way the LangChain docs show it, with no ids (so a second run adds
the same chunks again). Loading is `Path.read_text` into a `Document` (what
langchain_community's TextLoader does; that package is not installed here).

check_embedding_ctx_length: left at LangChain's default, True. Our chunks are at
most ~500 tokens so the 8191-token check never splits anything, but True is also
what makes LangChain cap a request at 300,000 tokens (MAX_TOKENS_PER_REQUEST);
with False it sends `chunk_size`=1000 texts per request whatever their size,
which the API rejects (HTTP 400) for any file over ~1000 chunks. The cost of
True: every chunk is tokenized again client-side and sent as token ids.
Runs in its own venv (bench/work/venv-langchain); needs TIKTOKEN_CACHE_DIR offline.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_openai import OpenAIEmbeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("chroma_dir")
    ap.add_argument("base_url")
    ap.add_argument("api_key")
    ap.add_argument("--check-ctx", default="true", choices=["true", "false"])
    ap.add_argument("--collection", default="transcripts")
    args = ap.parse_args()

    splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        chunk_size=500, chunk_overlap=50, encoding_name="cl100k_base")
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=args.base_url,
                                  api_key=args.api_key,
                                  check_embedding_ctx_length=args.check_ctx == "true")
    store = Chroma(collection_name=args.collection, embedding_function=embeddings,
                   persist_directory=args.chroma_dir, collection_metadata={"hnsw:space": "cosine"})
    files = chunks = 0
    started = time.monotonic()
    for path in sorted(Path(args.corpus).rglob("*.txt")):
        text = path.read_text(encoding="utf-8")
        docs = splitter.split_documents([Document(page_content=text, metadata={"source": str(path)})])
        if docs:
            store.add_documents(docs)
        files += 1
        chunks += len(docs)
    print(json.dumps({"files": files, "chunks_added": chunks,
                      "seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
