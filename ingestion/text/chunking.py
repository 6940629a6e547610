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

Counting: every count is exactly len(encode_ordinary(text)) of the piece or chunk
text on its own (so the bound is exact, not an estimate), but the text is encoded
only once, a section at a time, and counts are read off token offsets. This rests
on "sync points": positions P where tiktoken's cl100k_base pre-tokenizer always
splits, whatever comes before or after, and where cutting the text changes nothing
on either side:
  - after an ASCII letter or digit, before an ASCII character that is neither;
  - after a non-space character, before a space or a tab;
  - after a line feed, before a non-space character.
(The pre-token holding P-1 is a letter run, a 1-3 digit group, a contraction, a
punctuation run or a whitespace run ending in a line feed, and none of these can
reach past P or depend on the text after P.) So the tokens of text[a:b] are those of
text[a:P1], then the section's own tokens from P1 to P2, then those of text[P2:b],
P1 and P2 being the first and last sync points inside; the two short ends (usually
a word and some punctuation) are encoded alone and cached. Where no sync point is
known (one huge word) a count falls back to encoding the text itself, in windows
of a few thousand characters as before. This relies on cl100k_base's pre-tokenizer
pattern (tiktoken is pinned); the golden-output tests and a test comparing counts of
random spans with tiktoken's own check it. CHUNKER_VERSION names the cutting rules;
the counting method is not part of them.

Memory: the text arrives in blocks and is handled a section at a time; the chunk
in progress (and at most _CARRY_CHARS after the last sync point) is the only text
held across sections.
Chunk.start and Chunk.end are character offsets in the whole text fed (all blocks
concatenated): text[c.start:c.end] == c.text.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Iterable, Iterator

import tiktoken

from ingestion.openai_api import models

# The version of the cutting rules (pieces, ranks, packing, overlap, stripping, metadata).
# It is recorded with the stored chunks: bump it whenever a change here changes the
# output (any chunk's text, boundaries, token_count, start_time or speakers) for some
# input, and re-record tests/fixtures/chunks_golden (see make_golden.py there).
CHUNKER_VERSION = 1

SECTION_CHARS = 1 << 17
MAX_TOKEN_CHARS = 128  # no cl100k_base token is longer than this
_NAME = r"[A-Z][A-Za-z.'\-]*(?:[ \t]+[A-Z][A-Za-z.'\-]*){0,4}"
_TIME = r"\[(\d{1,2}:\d{2}(?::\d{2})?)\]"
# A line that opens a speaker turn: optional PDF line number, then NAME: or [hh:mm:ss].
TURN_START = re.compile(rf"[ \t]*(?:\d{{1,3}}[ \t]+)?(?:{_TIME}|({_NAME}):(?=[ \t]|$))")
SPEAKER_LINE = re.compile(rf"^[ \t]*(?:\d{{1,3}}[ \t]+)?(?:{_TIME}[ \t]*)?({_NAME}):(?=[ \t]|$)", re.M)
TIMESTAMP = re.compile(_TIME)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*[ \t]+(?=\S)")
# The same cuts (match ends), found faster: the punctuation is matched instead of looked behind.
_SENTENCE_CUT = re.compile(r"[.!?][\"')\]]*[ \t]+(?=\S)")
WORD = re.compile(r"\S+\s*|\s+")

# Sync points (see the module docstring). Python's \S (not str.isspace) is narrower
# than "not Unicode White_Space", so these only ever find fewer points, never wrong ones.
_SYNC = (r"(?<=[A-Za-z0-9])(?=[\x00-/:-@\[-`{-\x7f])"
         r"|(?<=\S)(?=[ \t])"
         r"|(?<=\n)(?=\S)")
_FIRST_SYNC = re.compile(_SYNC)
_SYNC_CHAR = re.compile(r"[\x00-/:-@\[-`{-\x7f]")  # every sync point has one at P or P-1
_LAST_SYNC = re.compile(rf"(?s:.*)(?:{_SYNC})")
_SYNC_SPAN = re.compile(rf"(?:{_SYNC})(?s:.*)(?:{_SYNC})")
_BLOCK_BITS = 8        # non-ASCII text: character to byte offsets kept per 256-character block
# A sync point further back than this stops being carried: the text after it is then
# counted directly when needed (a huge word), so memory stays bounded.
_CARRY_CHARS = SECTION_CHARS
_SMALL = 24             # pieces this short are counted through the cache directly
_CACHE_CHARS = 48       # longest string kept in the count cache
_CACHE_ENTRIES = 1 << 16

# piece tuple fields
_A, _B, _N, _RANK, _SPEAKER, _TIMEF = range(6)


def line_rank(turn: bool, after_blank: bool) -> int:
    """The boundary in front of a line: 0 a speaker turn after a blank line, 1 a paragraph (after a
    blank line) or a speaker turn, 2 a line. The chunker and the file splitter (file_parts) both cut by it."""
    if turn:
        return 0 if after_blank else 1
    return 1 if after_blank else 2


@dataclass
class Chunk:
    index: int
    text: str
    token_count: int
    start_time: str
    speakers: list[str] = field(default_factory=list)
    start: int = 0  # offset of text in the whole text fed (all blocks concatenated)
    end: int = 0    # text == whole_text[start:end]


_encoding = None
_token_lengths = None
_count_cache: dict[str, int] = {}


def encoding() -> tiktoken.Encoding:
    """The tokenizer of every OpenAI embeddings model (models.TOKENIZER: cl100k_base), loaded once."""
    global _encoding
    if _encoding is None:
        try:
            enc = tiktoken.get_encoding(models.TOKENIZER)
        except Exception as e:  # tiktoken downloads its file on first use; offline that fails
            from ingestion.common.errors import ConfigError

            raise ConfigError("cannot load tiktoken's cl100k_base file (no network and no cached copy: "
                              f"{type(e).__name__}); set TIKTOKEN_CACHE_DIR to a folder holding it, "
                              "see README (tools/seed_tiktoken_cache.py)") from None
        _lengths(enc)  # the chunker's table, built with the tokenizer (so once in a fork server)
        _encoding = enc
    return _encoding


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def _lengths(enc: tiktoken.Encoding):
    """Byte length of every ordinary token, indexed by token id.

    Built once per process (a few milliseconds), by encoding().
    """
    global _token_lengths
    if _token_lengths is None:
        ranks = getattr(enc, "_mergeable_ranks", None)
        if isinstance(ranks, dict) and list(ranks.values()) == list(range(len(ranks))):
            lengths = list(map(len, ranks))
        else:
            lengths = []
            for token in range(enc.max_token_value + 1):
                try:
                    lengths.append(len(enc.decode_single_token_bytes(token)))
                except Exception:  # a gap or a special token: never in encode_ordinary's output
                    lengths.append(0)
        _token_lengths = lengths
    return _token_lengths


def _cached_count(enc: tiktoken.Encoding, text: str) -> int:
    n = _count_cache.get(text)
    if n is None:
        n = len(enc.encode_ordinary(text))
        if len(text) <= _CACHE_CHARS:
            if len(_count_cache) >= _CACHE_ENTRIES:
                _count_cache.clear()
            _count_cache[text] = n
    return n


class _Region:
    """The tokens of text[start:stop] (start and stop sync points), as cumulative byte ends."""
    __slots__ = ("start", "stop", "seg", "base", "ends", "extra")

    def __init__(self, start, stop, seg, base, ends, extra):
        self.start, self.stop, self.seg, self.base = start, stop, seg, base
        self.ends = ends    # ends[i]: bytes from start to the end of token i
        # None when the text is ASCII, else per block of 2**_BLOCK_BITS characters the UTF-8
        # bytes beyond one per character before it, negative (-1 - that) when the block is
        # not ASCII, and last the same for the whole text
        self.extra = extra


def _extra_bytes(text: str) -> list[int]:
    """_Region.extra of a non-ASCII text (raises UnicodeEncodeError on lone surrogates)."""
    extra, more, size = [], 0, 1 << _BLOCK_BITS
    for i in range(0, len(text), size):
        block = text[i:i + size]
        if block.isascii():
            extra.append(more)
        else:
            extra.append(-1 - more)
            more += len(block.encode("utf-8")) - len(block)
    extra.append(more)
    return extra


class Chunker:
    """Feeds text blocks in, gets chunks out. One Chunker per file."""

    def __init__(self, max_tokens: int, overlap_tokens: int):
        self.max = max_tokens
        self.overlap = overlap_tokens
        self.enc = encoding()
        self._tl = _lengths(self.enc)
        self.pieces: list[tuple] = []  # (start, end, tokens, rank, speaker, time), contiguous
        self.fresh_from = 0      # pieces before this index repeat the previous chunk
        self.total = 0           # tokens in self.pieces
        self.index = 0
        self.speaker = ""
        self.time = ""
        self.prev_blank = True   # the file starts like a paragraph
        # the text held: whole_text[_buf_start:_end]
        self._buf = ""
        self._buf_start = 0
        self._end = 0
        self._regions: list[_Region] = []
        self._chain: int | None = None  # sync point where the next region starts (None: in a gap)
        self._seg = 0
        self._cum = 0
        self._memo = (-1, -1, 0)
        self._strip_memo = (-1, -1, (0, 0))
        self._out: list[Chunk] = []

    # ---- counting ----------------------------------------------------------------
    def _append(self, text: str) -> None:
        keep = self._end
        if self.pieces:
            keep = min(keep, self.pieces[0][_A])
        if self._chain is not None:
            keep = min(keep, max(0, self._chain - 1))  # the sync test at the chain looks one back
        keep = max(keep, self._buf_start)
        self._buf = self._buf[keep - self._buf_start:] + text
        self._buf_start = keep
        section_start = self._end
        self._end += len(text)
        while self._regions and self._regions[0].stop < keep:
            del self._regions[0]
        self._tokenize(section_start)

    def _tokenize(self, section_start: int) -> None:
        """Encode the new text once, from the last sync point known to the last one now seen."""
        buf, bs, end = self._buf, self._buf_start, self._end
        start = self._chain
        if start is None:
            lo = section_start - bs
            m = _SYNC_CHAR.search(buf, max(lo - 1, 0), end - bs)
            if m is not None:
                m = _FIRST_SYNC.search(buf, max(m.start(), lo), end - bs)
            if m is None:
                return
            start = m.start() + bs
            self._seg += 1
            self._cum = 0
        m = _LAST_SYNC.match(buf, start - bs, end - bs)
        stop = m.end() + bs if m else start
        if stop <= start:
            if end - start > _CARRY_CHARS:
                self._chain = None
            else:
                self._chain = start
            return
        text = buf[start - bs:stop - bs]
        extra = None
        if not text.isascii():
            try:
                extra = _extra_bytes(text)
            except UnicodeEncodeError:  # lone surrogates: tiktoken sees other text; count directly
                self._chain = None
                return
        tokens = self.enc.encode_ordinary(text)
        ends = list(accumulate(map(self._tl.__getitem__, tokens)))
        self._regions.append(_Region(start, stop, self._seg, self._cum, ends, extra))
        self._cum += len(tokens)
        self._chain = stop

    def _at(self, p: int):
        """(segment, tokens before p) for a sync point p inside a region, else None."""
        for r in reversed(self._regions):
            if r.start <= p:
                if p > r.stop:
                    return None
                rel = self._bytes(r, p)
                if rel == 0:
                    return r.seg, r.base
                i = bisect_right(r.ends, rel)
                if i and r.ends[i - 1] == rel:
                    return r.seg, r.base + i
                return None
        return None

    def _bytes(self, r: _Region, p: int) -> int:
        """UTF-8 bytes of whole_text[r.start:p] (p a sync point, so not inside a character)."""
        rel = p - r.start
        extra = r.extra
        if extra is None:
            return rel
        k = rel >> _BLOCK_BITS
        more = extra[k]
        if more >= 0:
            return rel + more
        # a block with non-ASCII text: encode from its start to p, or from p to its end
        # when its start is no longer held
        buf, bs = self._buf, self._buf_start
        lo = r.start + (k << _BLOCK_BITS)
        if lo >= bs:
            return rel - 1 - more + len(buf[lo - bs:p - bs].encode("utf-8")) - (p - lo)
        hi = min(lo + (1 << _BLOCK_BITS), r.stop)
        after = extra[k + 1]
        if after < 0:
            after = -1 - after
        return rel + after - (len(buf[p - bs:hi - bs].encode("utf-8")) - (hi - p))

    def _count(self, a: int, b: int) -> int:
        """len(encode_ordinary(whole_text[a:b])), reading the tokens already computed."""
        bs = self._buf_start
        if b - a <= _SMALL:
            text = self._buf[a - bs:b - bs]
            n = _count_cache.get(text)
            return n if n is not None else _cached_count(self.enc, text)
        memo = self._memo
        if memo[0] == a and memo[1] == b:
            return memo[2]
        n = self._span(a, b)
        self._memo = (a, b, n)
        return n

    def _span(self, a: int, b: int) -> int:
        buf, bs = self._buf, self._buf_start
        regions = self._regions
        if regions and regions[-1].stop > a:
            m = _SYNC_SPAN.search(buf, a - bs, b - bs)
            if m is not None:
                p1, p2 = m.start() + bs, m.end() + bs
                r = regions[-1]
                if r.start <= p1 and p2 <= r.stop:  # the common case, inline: both in the last region
                    rel1, rel2 = p1 - r.start, p2 - r.start
                    if r.extra is not None:  # non-ASCII text: characters to bytes
                        extra = r.extra
                        more = extra[rel1 >> _BLOCK_BITS]
                        rel1 = rel1 + more if more >= 0 else self._bytes(r, p1)
                        more = extra[rel2 >> _BLOCK_BITS]
                        rel2 = rel2 + more if more >= 0 else self._bytes(r, p2)
                    ends = r.ends
                    i1 = bisect_right(ends, rel1)
                    i2 = bisect_right(ends, rel2)
                    ok = ((rel1 == 0 or (i1 and ends[i1 - 1] == rel1))
                          and (rel2 == 0 or (i2 and ends[i2 - 1] == rel2)))
                    mid = i2 - i1 if ok else -1
                else:
                    c1 = self._at(p1)
                    c2 = self._at(p2) if p2 != p1 else c1
                    mid = c2[1] - c1[1] if c1 is not None and c2 is not None and c1[0] == c2[0] else -1
                if mid >= 0:
                    cache = _count_cache
                    if p1 > a:
                        text = buf[a - bs:p1 - bs]
                        n = cache.get(text)
                        mid += n if n is not None else _cached_count(self.enc, text)
                    if p2 < b:
                        text = buf[p2 - bs:b - bs]
                        n = cache.get(text)
                        mid += n if n is not None else _cached_count(self.enc, text)
                    return mid
        return len(self.enc.encode_ordinary(buf[a - bs:b - bs]))

    # ---- text to pieces --------------------------------------------------------
    def _pieces_of(self, text: str) -> None:
        """Cut one section into ranked pieces (a line at a time) and pack them."""
        pos = self._end - len(text)  # global offset of the current line
        cuts = [m.end() + pos for m in _SENTENCE_CUT.finditer(text)]
        cuts.append(1 << 62)
        cut_i = 0
        next_cut = cuts[0]
        mx = self.max
        limit = MAX_TOKEN_CHARS * mx
        cache = _count_cache
        enc = self.enc
        for line in text.splitlines(keepends=True):
            a = pos
            pos += len(line)
            if line.isspace():  # no turn, no sentence, no timestamp: one piece of rank 2
                self.prev_blank = True
                n = cache.get(line)
                if n is None and pos - a <= _SMALL:
                    n = _cached_count(enc, line)
                if n is not None and self.total + n <= mx:
                    self.pieces.append((a, pos, n, 2, self.speaker, self.time))
                    self.total += n
                else:
                    self._fit(a, pos, 2, limit, -1 if n is None else n)
                continue
            turn = TURN_START.match(line) if ":" in line or "[" in line else None
            if turn:
                if turn.group(1):
                    self.time = turn.group(1)
                name = SPEAKER_LINE.match(line)
                if name:
                    self.speaker = name.group(2)
            rank = line_rank(bool(turn), self.prev_blank)
            self.prev_blank = False
            start = a
            while next_cut < pos:
                self._fit(start, next_cut, rank, limit)
                start, rank = next_cut, 3
                cut_i += 1
                next_cut = cuts[cut_i]
            if pos - start <= limit:
                if start == a and pos - a <= _SMALL:
                    n = cache.get(line)
                    if n is None:
                        n = _cached_count(enc, line)
                else:
                    n = self._count(start, pos) if pos - start <= _SMALL else self._span(start, pos)
                if self.total + n <= mx:
                    self.pieces.append((start, pos, n, rank, self.speaker, self.time))
                    self.total += n
                else:
                    self._fit(start, pos, rank, limit, n)
            else:
                self._fit(start, pos, rank, limit)
            if "[" in line:
                for m in TIMESTAMP.finditer(line, turn.end() if turn else 0):
                    self.time = m.group(1)

    def _fit(self, a: int, b: int, rank: int, limit: int, n: int = -1, by_words: bool = True) -> None:
        """[a, b) as one piece, or, when over the limit, as word pieces, then token pieces.

        n: its token count when already known.
        """
        if b - a <= limit:  # longer is surely over: skip counting
            if n < 0:
                n = self._count(a, b) if b - a <= _SMALL else self._span(a, b)
            if n <= self.max:
                if self.total + n > self.max:
                    self._add((a, b, n, rank, self.speaker, self.time))
                else:
                    self.pieces.append((a, b, n, rank, self.speaker, self.time))
                    self.total += n
                return
        if by_words:
            bs = self._buf_start
            for i, m in enumerate(WORD.finditer(self._buf, a - bs, b - bs)):
                self._fit(m.start() + bs, m.end() + bs, rank if i == 0 else 4, limit, by_words=False)
        else:
            for piece in self._hard_split(a, b, rank):
                self._add(piece)

    def _hard_split(self, a: int, b: int, rank: int) -> Iterator[tuple]:
        """Cut a word longer than the limit into pieces that fit, losing nothing.

        Works on windows of a few thousand characters: BPE on one huge word is
        slow, so the word is never encoded whole.
        """
        start = a
        while start < b:
            size = min(b - start, 4 * self.max)
            while True:
                n = self._count(start, start + size)
                if n <= self.max or size == 1:
                    break
                size = max(1, min(size - 1, size * self.max // n))
            yield (start, start + size, n, rank if start == a else 5, self.speaker, self.time)
            start += size

    # ---- pieces to chunks ------------------------------------------------------
    def _add(self, piece: tuple) -> None:
        while self.total + piece[_N] > self.max:
            if len(self.pieces) == self.fresh_from:
                # only overlap left and it does not fit with this piece: shorten it
                self.total -= self.pieces.pop(0)[_N]
                self.fresh_from -= 1
                continue
            self._cut(piece)
        self.pieces.append(piece)
        self.total += piece[_N]

    def _cut(self, incoming: tuple) -> None:
        """Emit the chunk ending at the best boundary, keep the rest plus an overlap."""
        best_j, best_rank, filled = None, 99, 0
        half = self.max // 2
        fresh_from = self.fresh_from
        for j, p in enumerate(self.pieces):
            if j > fresh_from and filled >= half and p[_RANK] <= best_rank:
                best_j, best_rank = j, p[_RANK]
            filled += p[_N]
        if best_j is None or incoming[_RANK] <= best_rank:
            best_j = len(self.pieces)
        done, spill = self._fit_chunk(self.pieces[:best_j], fresh_from)
        rest = spill + self.pieces[best_j:]
        self._make_chunks(done)
        overlap: list[tuple] = []
        budget = self.overlap
        for p in reversed(done):
            if p[_N] > budget:
                break
            overlap.append(p)
            budget -= p[_N]
        overlap.reverse()
        self.pieces = overlap + rest
        self.fresh_from = len(overlap)
        self.total = sum(p[_N] for p in self.pieces)

    def _stripped(self, a: int, b: int) -> tuple[int, int]:
        """The offsets of whole_text[a:b].strip()."""
        memo = self._strip_memo
        if memo[0] == a and memo[1] == b:
            return memo[2]
        bs = self._buf_start
        left = self._buf[a - bs:b - bs].lstrip()
        start = b - len(left)
        span = (start, start + len(left.rstrip())) if left else (b, b)
        self._strip_memo = (a, b, span)
        return span

    def _fit_chunk(self, done: list[tuple], fresh_from: int) -> tuple[list[tuple], list[tuple]]:
        """Joining pieces can merge tokens differently: shed overlap, then trailing pieces, until it fits.

        At least one new piece always stays, so every cut makes progress.
        """
        spill: list[tuple] = []
        while done and self._count(*self._stripped(done[0][_A], done[-1][_B])) > self.max:
            if fresh_from > 0:
                done, fresh_from = done[1:], fresh_from - 1
            elif len(done) > 1:
                spill.insert(0, done.pop())
            else:
                break  # one piece: _make_chunks splits it hard if it really is too long
        return done, spill

    def _make_chunks(self, pieces: list[tuple]) -> None:
        if not pieces:
            return
        start, end = self._stripped(pieces[0][_A], pieces[-1][_B])
        if start == end:
            return
        n = self._count(start, end)
        first = pieces[0]
        if n > self.max:  # stripping changed the tokens of a single piece: cut it hard
            for part in self._hard_split(start, end, 5):
                self._make_chunks([(part[_A], part[_B], part[_N], 5, first[_SPEAKER], first[_TIMEF])])
            return
        bs = self._buf_start
        text = self._buf[start - bs:end - bs]
        stamp = TIMESTAMP.search(text)
        speakers = [] if SPEAKER_LINE.match(text) or not first[_SPEAKER] else [first[_SPEAKER]]
        for name in _speaker_lines(text):
            if name not in speakers:
                speakers.append(name)
        self._out.append(Chunk(self.index, text, n, stamp.group(1) if stamp else first[_TIMEF], speakers,
                               start, end))
        self.index += 1

    def _flush(self) -> list[Chunk]:
        out, self._out = self._out, []
        return out

    # ---- public ----------------------------------------------------------------
    def feed(self, text: str) -> Iterator[Chunk]:
        if not text:
            return
        self._append(text)
        self._pieces_of(text)
        yield from self._flush()

    def finish(self) -> Iterator[Chunk]:
        while len(self.pieces) > self.fresh_from:
            done, spill = self._fit_chunk(self.pieces, self.fresh_from)
            self._make_chunks(done)
            self.pieces, self.fresh_from, self.total = [], 0, 0
            for p in spill:
                self._add(p)
        yield from self._flush()


def _speaker_lines(text: str) -> Iterator[str]:
    """The names of SPEAKER_LINE.finditer(text), trying only the lines that hold a colon.

    A match lies within one line ("^" is a line start in re.M, the pattern has no line
    feed), needs a colon, and there is at most one per line, so these are the same.
    """
    colon = text.find(":")
    while colon >= 0:
        m = SPEAKER_LINE.match(text, text.rfind("\n", 0, colon) + 1)
        if m:
            yield m.group(2)
        line_end = text.find("\n", colon)
        if line_end < 0:
            return
        colon = text.find(":", line_end)


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
