#!/usr/bin/env python3
"""Ask the store a question: embed it with the same model and print the closest chunks,
with their source file, position (page:line for paginated transcripts) and distance, to
check the store before wiring it into an application. Once optimize_chromadb.py has run,
only rag_strict chunks are searched."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not ingestion/

import json  # noqa: E402
import textwrap  # noqa: E402

from ingestion.common import cli, settings  # noqa: E402
from ingestion.common.errors import ConfigError  # noqa: E402
from ingestion.openai_api.embeddings import Embedder  # noqa: E402
from ingestion.storage.store import Store  # noqa: E402

DISTANCE_NAMES = {"cosine": "cosine distance", "l2": "squared L2 distance", "ip": "inner-product distance"}


def citation(meta: dict) -> str | None:
    """page:line-page:line of a chunk of a paginated transcript."""
    if not isinstance(meta.get("page_start"), int):
        return None
    start = f"{meta['page_start']}:{meta['line_start']}"
    end = f"{meta['page_end']}:{meta['line_end']}"
    return start if start == end else f"{start}-{end}"


def main() -> int:
    p = cli.parser("query_chromadb.py", __doc__)
    p.add_argument("question")
    p.add_argument("-k", type=int, default=5, help="how many chunks to show (default 5, at least 1)")
    p.add_argument("--all", action="store_true", help="search every chunk, not only rag_strict ones")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    if not args.question.strip():
        raise ConfigError("the question is empty")
    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    cfg = settings.load()
    settings.api_key()
    with Store(cfg, check="read", create=False) as store:
        if not store.count():
            print("the store is empty: run the worker first")
            return 0
        space = store.space()
        strict = not args.all and store.any_where({"rag_strict": True})
        vector = Embedder(cfg).embed([args.question], 0)[0]
        found = store.query(vector, args.k, where={"rag_strict": True} if strict else None)
    metas = [m or {} for m in found["metadatas"][0]]  # a collection made elsewhere may have none
    hits = [{"distance": round(d, 4), "source": m.get("source"), "part": m.get("part") or None,
             "chunk_index": m.get("chunk_index"), "start_time": m.get("start_time") or None,
             "citation": citation(m), "speakers": m.get("speakers") or None, "text": doc}
            for doc, m, d in zip(found["documents"][0], metas, found["distances"][0])]
    if args.json:
        print(json.dumps(hits, indent=1, ensure_ascii=False))
        return 0
    scope = "rag_strict chunks" if strict else "all chunks"
    print(f"{len(hits)} closest of {scope} ({DISTANCE_NAMES.get(space, space + ' distance')}: lower is closer)")
    for n, h in enumerate(hits, 1):
        where = f"chunk {h['chunk_index']}" + (f" of part {h['part']}" if h["part"] else "")
        where += f", {h['citation']}" if h["citation"] else ""
        when = f" at {h['start_time']}" if h["start_time"] else ""
        who = f" [{h['speakers']}]" if h["speakers"] else ""
        print(f"\n{n}. {h['distance']:.4f}  {h['source']}  ({where}{when}){who}")
        print(textwrap.indent(textwrap.shorten(" ".join(h["text"].split()), 400), "   "))
    return 0


if __name__ == "__main__":
    cli.run(main)
