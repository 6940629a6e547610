"""Splitting a transcript into parts at natural boundaries (the auto_chunker's core).

Parts are written, UTF-8, as `STEM_01.txt`, `STEM_02.txt`, ... in a folder of their
own under `$CHECKPOINT_DIR/splits/` (one folder per original, so two originals
with the same name never collide), never inside TRANSCRIPTS_DIR. Put together in
order, the parts are exactly the original text: line ends are kept as they were.
A part is cut just before a speaker turn or a paragraph when one comes soon after
the target size, else at a line end, else (a huge line) at a space, else anywhere.
The file is streamed: memory stays flat whatever its size.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ingestion import chunking, textfile
from ingestion.errors import StateFileError

LOOKAHEAD = 0.25     # a part may grow this fraction past its target to reach a good boundary
MAX_LINE = 1 << 16   # longer lines are handled in slices


def _slices(blocks: Iterator[str]) -> Iterator[str]:
    """Lines with their line ends; lines over MAX_LINE come in slices ending at a space if possible."""
    for section in chunking.sections(blocks):
        for line in section.splitlines(keepends=True):
            while len(line) > MAX_LINE:
                cut = line.rfind(" ", 0, MAX_LINE) + 1 or MAX_LINE
                yield line[:cut]
                line = line[cut:]
            yield line


def _boundary_rank(line: str, prev_blank: bool) -> int:
    """0: speaker turn after a blank line, 1: paragraph or speaker turn, 2: any line."""
    turn = chunking.TURN_START.match(line) is not None
    if turn and prev_blank:
        return 0
    return 1 if turn or (prev_blank and line.strip()) else 2


def split_file(path: Path, out_dir: Path, parts: int | None = None, max_tokens: int | None = None) -> list[Path]:
    """Split path into parts (about `parts` equal parts, or parts of at most max_tokens tokens)."""
    info = textfile.inspect(path)
    text_size = max(1, info.size // (2 if info.encoding == "utf-16" else 1))
    target = text_size / parts if parts else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    current: list[str] = []   # only used with max_tokens (bounded by it)
    size = tokens = 0
    writer = None
    prev_blank = True

    def open_part():
        nonlocal writer
        name = f"{path.stem}_{len(written) + 1:02d}.txt"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out_dir)
        writer = (os.fdopen(fd, "w", encoding="utf-8", newline=""), Path(tmp), out_dir / name)

    def close_part():
        nonlocal writer, size, tokens
        f, tmp, final = writer
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        written.append(final)
        writer, size, tokens = None, 0, 0

    try:
        for line in _slices(textfile.iter_text(path, info, keep_line_ends=True)):
            rank = _boundary_rank(line, prev_blank)
            prev_blank = not line.strip()
            if max_tokens:
                n = chunking.count_tokens(line)
                if current and tokens + n > max_tokens:
                    _flush_best(current, max_tokens, open_part, close_part, lambda: writer)
                    tokens = sum(chunking.count_tokens(x) for x, _ in current)
                current.append((line, rank))
                tokens += n
                continue
            if writer is None:
                open_part()
            elif size >= target and (rank <= 1 or size >= target * (1 + LOOKAHEAD)) and len(written) < parts - 1:
                close_part()
                open_part()
            writer[0].write(line)
            size += len(line)
        if max_tokens:
            while current:
                _flush_best(current, max_tokens, open_part, close_part, lambda: writer, final=True)
        elif writer is not None:
            close_part()
    except OSError as e:
        if writer is not None:
            writer[0].close()
            with contextlib.suppress(OSError):
                os.unlink(writer[1])
        for p in written:
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise StateFileError(f"cannot write the parts of {path} in {out_dir}: {e.strerror or e}") from None
    return written


def _flush_best(current: list, max_tokens: int, open_part, close_part, writer, final: bool = False) -> None:
    """Write the lines of `current` up to its best boundary as one part, keep the rest."""
    cut = len(current)
    if not final:
        half = len(current) // 2
        candidates = [i for i in range(max(1, half), len(current)) if current[i][1] <= 1]
        if candidates:
            best = min(current[i][1] for i in candidates)
            cut = max(i for i in candidates if current[i][1] == best)
    open_part()
    for line, _ in current[:cut]:
        writer()[0].write(line)
    close_part()
    del current[:cut]
