"""The metadata of a stored chunk: its keys, their types, and how a chunk's record is made.

Used by the pipeline (writing), the optimizer (validating) and the tests.
"""
from __future__ import annotations

from ingestion.text.file_chunks import CITATION_KEYS

# Every chunk has these, with these types (the optimizer flags a chunk without them).
REQUIRED = {"source": str, "chunk_index": int, "token_count": int, "content_sha256": str, "file_sha256": str}
# Also written for every chunk.
ALWAYS = {"part": str, "start_time": str, "speakers": str, "encoding": str, "ingested_at": int}
# Chunks of a paginated transcript (TEXT_CLEANUP=auto): where the chunk is, in the transcript's own numbering.
CITATION = dict.fromkeys(CITATION_KEYS, int)
# Where a chunk sits in its file: updated without re-embedding when an edit moves a stored text.
POSITION = ("chunk_index", "part", "file_sha256", "start_time", "speakers", *CITATION)
# Set by the optimizer.
FLAGS = {"rag_strict": bool, "source_only": bool, "also_sources": list}


def chunk_metadata(source: str, index: int, token_count: int, content_sha256: str, file_sha256: str, part: str,
                   start_time: str, speakers: list[str], encoding: str, ingested_at: int,
                   citation: dict[str, int] | None = None) -> dict:
    return {"source": source, "chunk_index": index, "part": part, "token_count": token_count,
            "content_sha256": content_sha256, "file_sha256": file_sha256, "start_time": start_time,
            "speakers": ", ".join(speakers), "encoding": encoding, "ingested_at": ingested_at, **(citation or {})}


def position(meta: dict) -> tuple:
    return tuple(meta.get(k) for k in POSITION)
