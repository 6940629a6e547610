"""Cutting text into chunks of at most CHUNK_MAX_TOKENS tokens at natural boundaries.

The text is cut into small pieces (sentences, or lines when a line has no sentence
end), each ranked by the boundary in front of it:

  0  a speaker turn (`NAME:` or `[hh:mm:ss]` at a line start) after a blank line
  1  a paragraph (after a blank line), or a speaker turn at a line start
  2  a line
  3  a sentence
  4  a word (only inside a sentence longer than the limit)
  5  a token (only inside a word longer than the limit)

Pieces are packed into a chunk until the next one would not fit; the chunk is then
cut at the strongest boundary (lowest rank) in its second half, the latest of
equals. In PDF-extracted transcripts every line is its own paragraph, which is
why a speaker turn after a blank line outranks a plain paragraph.

Overlap: the next chunk starts with the last whole pieces of the previous one, up
to CHUNK_OVERLAP_TOKENS tokens (fewer when the last sentence is longer).

Memory: the text arrives in blocks and is handled a section at a time; a chunk in
progress is the only thing held across sections. Every chunk is counted again
once joined, so the bound is exact, not an estimate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import tiktoken

SECTION_CHARS = 1 << 17
MAX_TOKEN_CHARS = 128  # no cl100k_base token is longer than this
_NAME = r"[A-Z][A-Za-z.'\-]*(?:[ \t]+[A-Z][A-Za-z.'\-]*){0,4}"
_TIME = r"\[(\d{1,2}:\d{2}(?::\d{2})?)\]"
# A line that opens a speaker turn: optional PDF line number, then NAME: or [hh:mm:ss].
TURN_START = re.compile(rf"[ \t]*(?:\d{{1,3}}[ \t]+)?(?:{_TIME}|({_NAME}):(?=[ \t]|$))")
SPEAKER_LINE = re.compile(rf"^[ \t]*(?:\d{{1,3}}[ \t]+)?(?:{_TIME}[ \t]*)?({_NAME}):(?=[ \t]|$)", re.M)
TIMESTAMP = re.compile(_TIME)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*[ \t]+(?=\S)")
WORD = re.compile(r"\S+\s*|\s+")


@dataclass
class Piece:
    text: str
    tokens: int
    rank: int
    speaker: str  # who is speaking where this piece starts
    time: str     # the last [hh:mm:ss] seen where this piece starts


@dataclass
class Chunk:
    index: int
    text: str
    token_count: int
    start_time: str
    speakers: list[str] = field(default_factory=list)


_encoding = None


def encoding() -> tiktoken.Encoding:
    """cl100k_base, the tokenizer of every OpenAI embeddings model (loaded once)."""
    global _encoding
    if _encoding is None:
        try:
            _encoding = tiktoken.get_encoding("cl100k_base")
        except Exception as e:  # tiktoken downloads its file on first use; offline that fails
            from ingestion.errors import ConfigError

            raise ConfigError("cannot load tiktoken's cl100k_base file (no network and no cached copy: "
                              f"{type(e).__name__}); set TIKTOKEN_CACHE_DIR to a folder holding it, "
                              "see README (tools/seed_tiktoken_cache.py)") from None
    return _encoding


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


class Chunker:
    """Feeds text blocks in, gets chunks out. One Chunker per file."""

    def __init__(self, max_tokens: int, overlap_tokens: int):
        self.max = max_tokens
        self.overlap = overlap_tokens
        self.enc = encoding()
        self.pieces: list[Piece] = []
        self.fresh_from = 0      # pieces before this index repeat the previous chunk
        self.total = 0           # tokens in self.pieces
        self.index = 0
        self.speaker = ""
        self.time = ""
        self.prev_blank = True   # the file starts like a paragraph

    # ---- text to pieces --------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.enc.encode_ordinary(text))

    def _line_pieces(self, line: str) -> Iterator[Piece]:
        """One line (with its newline) as ranked pieces, updating speaker and time."""
        blank = not line.strip()
        turn = TURN_START.match(line)
        if turn:
            if turn.group(1):
                self.time = turn.group(1)
            name = SPEAKER_LINE.match(line)
            if name:
                self.speaker = name.group(2)
            rank = 0 if self.prev_blank else 1
        else:
            rank = 1 if self.prev_blank and not blank else 2
        self.prev_blank = blank
        start = 0
        for m in SENTENCE_END.finditer(line):
            yield from self._fit(line[start:m.end()], rank)
            start, rank = m.end(), 3
        if start < len(line):
            yield from self._fit(line[start:], rank)
        for m in TIMESTAMP.finditer(line, turn.end() if turn else 0):
            self.time = m.group(1)

    def _fit(self, text: str, rank: int, by_words: bool = True) -> Iterator[Piece]:
        """text as one piece, or, when over the limit, as word pieces, then token pieces."""
        if len(text) <= MAX_TOKEN_CHARS * self.max:  # longer is surely over: skip counting
            n = self._count(text)
            if n <= self.max:
                yield Piece(text, n, rank, self.speaker, self.time)
                return
        if by_words:
            for i, m in enumerate(WORD.finditer(text)):
                yield from self._fit(m.group(), rank if i == 0 else 4, by_words=False)
        else:
            yield from self._hard_split(text, rank)

    def _hard_split(self, text: str, rank: int) -> Iterator[Piece]:
        """Cut a word longer than the limit into pieces that fit, losing nothing.

        Works on windows of a few thousand characters: BPE on one huge word is
        quadratic, so the word is never encoded whole.
        """
        start = 0
        while start < len(text):
            size = min(len(text) - start, 4 * self.max)
            while True:
                piece = text[start:start + size]
                n = self._count(piece)
                if n <= self.max or size == 1:
                    break
                size = max(1, min(size - 1, size * self.max // n))
            yield Piece(piece, n, rank if start == 0 else 5, self.speaker, self.time)
            start += size

    # ---- pieces to chunks ------------------------------------------------------
    def _add(self, piece: Piece) -> Iterator[Chunk]:
        while self.total + piece.tokens > self.max:
            if len(self.pieces) == self.fresh_from:
                # only overlap left and it does not fit with this piece: shorten it
                self.total -= self.pieces.pop(0).tokens
                self.fresh_from -= 1
                continue
            yield from self._cut(piece)
        self.pieces.append(piece)
        self.total += piece.tokens

    def _cut(self, incoming: Piece) -> Iterator[Chunk]:
        """Emit the chunk ending at the best boundary, keep the rest plus an overlap."""
        best_j, best_rank, filled = None, 99, 0
        half = self.max // 2
        for j, p in enumerate(self.pieces):
            if j > self.fresh_from and filled >= half and p.rank <= best_rank:
                best_j, best_rank = j, p.rank
            filled += p.tokens
        if best_j is None or incoming.rank <= best_rank:
            best_j = len(self.pieces)
        done, spill = self._fit_chunk(self.pieces[:best_j], self.fresh_from)
        rest = spill + self.pieces[best_j:]
        yield from self._make_chunks(done)
        overlap: list[Piece] = []
        budget = self.overlap
        for p in reversed(done):
            if p.tokens > budget:
                break
            overlap.insert(0, p)
            budget -= p.tokens
        self.pieces = overlap + rest
        self.fresh_from = len(overlap)
        self.total = sum(p.tokens for p in self.pieces)

    def _fit_chunk(self, done: list[Piece], fresh_from: int) -> tuple[list[Piece], list[Piece]]:
        """Joining pieces can merge tokens differently: shed overlap, then trailing pieces, until it fits.

        At least one new piece always stays, so every cut makes progress.
        """
        spill: list[Piece] = []
        while self._count("".join(p.text for p in done).strip()) > self.max:
            if fresh_from > 0:
                done, fresh_from = done[1:], fresh_from - 1
            elif len(done) > 1:
                spill.insert(0, done.pop())
            else:
                break  # one piece: _make_chunks splits it hard if it really is too long
        return done, spill

    def _make_chunks(self, pieces: list[Piece]) -> Iterator[Chunk]:
        text = "".join(p.text for p in pieces).strip()
        if not text:
            return
        n = self._count(text)
        first = pieces[0]
        if n > self.max:  # stripping changed the tokens of a single piece: cut it hard
            for part in self._hard_split(text, 5):
                yield from self._make_chunks([Piece(part.text, part.tokens, 5, first.speaker, first.time)])
            return
        stamp = TIMESTAMP.search(text)
        speakers = [] if SPEAKER_LINE.match(text) or not first.speaker else [first.speaker]
        for m in SPEAKER_LINE.finditer(text):
            if m.group(2) not in speakers:
                speakers.append(m.group(2))
        yield Chunk(self.index, text, n, stamp.group(1) if stamp else first.time, speakers)
        self.index += 1

    # ---- public ----------------------------------------------------------------
    def feed(self, text: str) -> Iterator[Chunk]:
        for line in text.splitlines(keepends=True):
            for piece in self._line_pieces(line):
                yield from self._add(piece)

    def finish(self) -> Iterator[Chunk]:
        while len(self.pieces) > self.fresh_from:
            done, spill = self._fit_chunk(self.pieces, self.fresh_from)
            yield from self._make_chunks(done)
            self.pieces, self.fresh_from, self.total = [], 0, 0
            for p in spill:
                yield from self._add(p)


def sections(blocks: Iterable[str]) -> Iterator[str]:
    """Regroup text blocks into sections that end at a line end (or hard, for huge lines)."""
    buffer = ""
    for block in blocks:
        buffer += block
        while len(buffer) >= SECTION_CHARS:
            cut = buffer.rfind("\n", 0, SECTION_CHARS) + 1
            if cut <= 0:
                space = buffer.rfind(" ", 0, SECTION_CHARS) + 1
                cut = space if space > 0 else SECTION_CHARS
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def iter_chunks(blocks: Iterable[str], max_tokens: int, overlap_tokens: int) -> Iterator[Chunk]:
    """All chunks of a text given as blocks, in order, each at most max_tokens tokens."""
    chunker = Chunker(max_tokens, overlap_tokens)
    for section in sections(blocks):
        yield from chunker.feed(section)
    yield from chunker.finish()
