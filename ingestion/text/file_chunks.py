"""Cutting one file into chunks: read, clean (paginated transcripts), chunk, cite.

The one function that decides a file's chunks: ingestion, the finishing of a split
file and the dry-run estimate all call it, so they always cut alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ingestion.common.settings import Config
from ingestion.text import chunking, textfile

log = logging.getLogger("ingestion")


# A paginated transcript's chunk is cited by these (stored in its metadata: storage/schema.CITATION)
CITATION_KEYS = ("page_start", "line_start", "page_end", "line_end")


@dataclass
class Cut:
    chunk: chunking.Chunk
    citation: dict[str, int]  # page_start, line_start, page_end, line_end; {} for plain transcripts


@dataclass
class CleanupReport:
    cleaned: bool = False
    index_dropped_chars: int = 0
    removed_lines: int = 0


def file_chunks(cfg: Config, path: Path, info: textfile.FileInfo,
                report: CleanupReport | None = None) -> Iterator[Cut]:
    """Every chunk of the file, in order. Raises textfile.FileChanged when it changed while read."""
    blocks = textfile.iter_text(path, info)
    if cfg.text_cleanup == "auto":
        from ingestion.text import page_layout

        if info.size <= page_layout.MAX_CLEANUP_CHARS:
            text = "".join(blocks)  # a paginated transcript is small; huge files stream as they are
            cleaned = page_layout.clean(text)
            if cleaned is not None:
                if report is not None:
                    report.cleaned = True
                    report.index_dropped_chars = cleaned.index_dropped_chars
                    report.removed_lines = cleaned.removed_lines
                for c in chunking.iter_chunks([cleaned.text], cfg.chunk_max_tokens, cfg.chunk_overlap_tokens):
                    page_start, line_start = page_layout.position(cleaned, c.start)
                    page_end, line_end = page_layout.position(cleaned, max(c.start, c.end - 1))
                    yield Cut(c, dict(zip(CITATION_KEYS, (page_start, line_start, page_end, line_end))))
                return
            blocks = [text]
    for c in chunking.iter_chunks(blocks, cfg.chunk_max_tokens, cfg.chunk_overlap_tokens):
        yield Cut(c, {})
