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
from pathlib import Path
from typing import Iterable, Iterator

from ingestion.common.atomicfile import replacing
from ingestion.common.errors import StateFileError
from ingestion.text import chunking, textfile

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
    """chunking.line_rank: 0 speaker turn after a blank line, 1 paragraph or speaker turn, 2 any line."""
    return chunking.line_rank(chunking.TURN_START.match(line) is not None, prev_blank and bool(line.strip()))


def _ranked_lines(path: Path, info: textfile.FileInfo) -> Iterator[tuple[str, int]]:
    prev_blank = True
    for line in _slices(textfile.iter_text(path, info, keep_line_ends=True)):
        yield line, _boundary_rank(line, prev_blank)
        prev_blank = not line.strip()


def split_file(path: Path, out_dir: Path, parts: int | None = None, max_tokens: int | None = None) -> list[Path]:
    """Split path into parts (about `parts` equal parts, or parts of at most max_tokens tokens)."""
    info = textfile.inspect(path)
    lines = _ranked_lines(path, info)
    if max_tokens:
        groups = _by_tokens(lines, max_tokens)
    else:
        text_size = max(1, info.size // (2 if info.encoding == "utf-16" else 1))
        groups = _by_size(lines, text_size / parts, parts)
    return _write_parts(path, out_dir, groups)


def _write_parts(path: Path, out_dir: Path, groups: Iterator[Iterable[str]]) -> list[Path]:
    """Each group of lines as one part, written atomically; on an error no part is left behind."""
    written: list[Path] = []
    try:
        for lines in groups:
            part = out_dir / f"{path.stem}_{len(written) + 1:02d}.txt"
            with replacing(part) as f:
                for line in lines:
                    f.write(line)
            written.append(part)
    except StateFileError as e:
        for p in written:
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise StateFileError(f"cannot write the parts of {path} in {out_dir}: {e}") from None
    return written


def _by_size(lines: Iterator[tuple[str, int]], target: float, parts: int) -> Iterator[Iterator[str]]:
    """Groups of about target characters, each ending just before a good boundary; at most `parts`."""
    upcoming = [next(lines, None)]
    made = [0]

    def one_part() -> Iterator[str]:
        size = 0
        while upcoming[0] is not None:
            line, rank = upcoming[0]
            if size >= target and (rank <= 1 or size >= target * (1 + LOOKAHEAD)) and made[0] < parts:
                return
            yield line
            size += len(line)
            upcoming[0] = next(lines, None)

    while upcoming[0] is not None:
        made[0] += 1
        yield one_part()


def _by_tokens(lines: Iterator[tuple[str, int]], max_tokens: int) -> Iterator[list[str]]:
    """Groups of at most max_tokens tokens, each cut at the best boundary in its second half."""
    current: list[tuple[str, int]] = []
    tokens = 0
    for line, rank in lines:
        n = chunking.count_tokens(line)
        if current and tokens + n > max_tokens:
            yield _take_best(current)
            tokens = sum(chunking.count_tokens(x) for x, _ in current)
        current.append((line, rank))
        tokens += n
    while current:
        yield [line for line, _ in current]
        current.clear()


def _take_best(current: list[tuple[str, int]]) -> list[str]:
    """The lines of `current` up to its best boundary (removed from it)."""
    cut = len(current)
    half = len(current) // 2
    candidates = [i for i in range(max(1, half), len(current)) if current[i][1] <= 1]
    if candidates:
        best = min(current[i][1] for i in candidates)
        cut = max(i for i in candidates if current[i][1] == best)
    taken = [line for line, _ in current[:cut]]
    del current[:cut]
    return taken
