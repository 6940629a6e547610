"""Cleaning paginated transcripts (text extracted from PDFs) into citable speech.

A court or deposition transcript extracted from a PDF carries layout that is not
speech: a gutter of line numbers (1-25, restarting on every page), a printed page
number, header/footer lines repeated on every page ("Alderson Reporting Company"),
runs of spaces from the page layout, and often a word index (concordance) at the
back: `abide 45:3`, `Washington 1:9 1:16,19,21`. `clean()` removes all of that and
keeps, for every character of the clean text, the page and line it came from.

Detection is per file and strict; when it is not clear, `clean()` returns None and
the caller uses the text exactly as it is. A file is cleaned only when all of these
hold:

- Gutters: a numbered line is a line starting (at most MAX_GUTTER_INDENT spaces in)
  with a number of one or two digits, then spaces or the end of the line. When that
  finds no clear pages, the gutter is looked for on the right instead: a number of
  one or two digits ending the line, after spaces or tabs of any width (or alone on
  it), the text before it being the line's. Either way the same rules follow. Numbered
  lines form a page when their numbers run 1, 2, 3 ... (a skip of up to MAX_SKIP is
  tolerated, a broken line is not fatal, except on a line holding only a number,
  which could be a page number) for at least MIN_PAGE_LINES lines and at
  most MAX_PAGE_LINES; a number of at most MAX_SKIP that does not continue the run
  starts the next page (unless the next numbered line does continue it). At least
  MIN_PAGES such pages are needed, the median page has at least TYPICAL_PAGE_LINES
  lines (numbered lists in a document are shorter), and at least half the pages
  have text on their numbered lines (not only a column of numbers). Runs at the end
  whose text is all word-index entries (`page:line` references) are not pages: an
  index's section headings 1, 2, 3 ... count up like a gutter on the right.
- Page numbers: a line holding only a number (or `Page 12`, `- 12 -`) between two
  pages. Whether it belongs to the page above (footer) or below (header) is decided
  for the whole file by which of the two it usually sits closer to. At least
  PAGE_NUMBER_SHARE of the pages must carry one, strictly increasing, mostly by one.
  A page that has none gets its neighbour's plus or minus one. A lone number lying
  between the numbers of the pages around it (the number of a page whose gutter is
  lost) is removed too.
- Pages without page numbers: when the page numbers are not clear, the pages must
  make up for them by being even, as a layout's pages are and numbered lists are
  not: PAGE_NUMBER_SHARE of the pages (the last aside) end at the same line number,
  and PAGE_NUMBER_SHARE of the gaps between pages hold at most MAX_GAP_LINES
  non-blank lines. (So pages of varying length, 26 and 28 lines, are left alone
  when they print no number.) Each page is then cited by the PDF page it is on,
  1 + the form feeds before it, when form feeds tell the pages apart, else by its
  place among the pages, from 1. Lone numbers between such pages stay as text.
- Header/footer lines: a line outside the gutters whose text (digits ignored) occurs
  around at least FURNITURE_SHARE of the pages (and MIN_PAGES of them; many times in
  one place does not count) is furniture. It is removed when present; it is not
  required.
- Word index: after the last page of gutters, from the first line dominated by
  `page:line` references (INDEX_LINE_SHARE of its words) to the end, when there are
  at least MIN_INDEX_LINES such lines and they are INDEX_SHARE of the non-blank lines
  there. It is dropped; its size is reported. References inside the gutters (a
  witness reading numbers out) are speech and stay.

The clean text of a detected file: gutter numbers, page numbers, furniture and blank
lines removed, runs of spaces collapsed to one, and the lines of a paragraph joined
into one line. A paragraph starts at a speaker turn (`JUSTICE SCALIA:`,
`MR. CARVIN:`, upper-case names then a colon), at a line indented deeper than the
file's usual text column (the layout's paragraph indent), and after a numbered line
that is empty. Paragraphs are separated by a blank line, so chunking's boundaries
still work: a turn after a blank line is the strongest, a paragraph the next.
Lines between pages that are neither furniture nor page numbers (a page whose
gutter is broken) are kept as text in place, without a page:line of their own.

Citations: `marks` holds, for each numbered line that contributes text, the offset in
the clean text where that text starts, with the transcript's own page number (the
printed one, or the one counted for pages without it) and line number (the gutter's).
`position()` finds the mark at or before an offset.

Input: text with LF line ends; form feeds (page breaks) are ignored, pages are found
by their gutters (form feeds only number the pages that print no number). Memory:
the whole text, its lines and the clean text are held at once (about nine times the
text's length at peak), so files longer than MAX_CLEANUP_CHARS are not cleaned.
Pure: no I/O, no state.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass

CLEANUP_VERSION = 1  # bump whenever the cleaning rules change the output of a file they cleaned before
# (version 1 also cleans right-hand line numbers and pages without a page number: files it left
# as they are before; every file cleaned before is cleaned byte for byte as before, so existing
# collections stay valid and nothing stored has to be paid for again)

# 20 M characters is about 8,000 pages of transcript (2.5 K characters a page), far
# more than one hearing or deposition. Cleaning peaks at about nine times the text's
# length (measured: 2.4 MB for the 276 KB real transcript), so near 200 MB at most,
# well under a worker's CHILD_MAX_RSS_MB. Longer files are read as they are.
MAX_CLEANUP_CHARS = 20_000_000

MIN_PAGES = 3
MIN_PAGE_LINES = 8
TYPICAL_PAGE_LINES = 20
MAX_PAGE_LINES = 40
MAX_SKIP = 3
MAX_GUTTER_INDENT = 6
PAGE_NUMBER_SHARE = 0.8
FURNITURE_SHARE = 0.5
MIN_INDEX_LINES = 20
INDEX_SHARE = 0.6
INDEX_LINE_SHARE = 0.4
PARAGRAPH_INDENT = 2  # columns deeper than the usual text column that start a paragraph
MAX_GAP_LINES = 8  # non-blank lines (footer, header) between two pages that print no page number

GUTTER = re.compile(rf"[ \t]{{0,{MAX_GUTTER_INDENT}}}(\d{{1,2}})(?=[ \t]|$)")
RIGHT_GUTTER = re.compile(r"(?:^|(?<=[ \t]))(\d{1,2})[ \t]*$")
PAGE_NUMBER = re.compile(r"(?:-[ \t]*)?(?:page[ \t]+)?(\d{1,4})(?:[ \t]*-)?", re.I)
LEADING_FEEDS = re.compile(r"\f*")
REF = re.compile(r"\d{1,4}:\d{1,2}")
SPEAKER = re.compile(r"(?:[A-Z][A-Z.'\-]*[ \t]+){0,4}[A-Z][A-Z.'\-]*:(?=[ \t]|$)")

BLANK, GUTTER_LINE, TEXT, PAGE_NO, FURNITURE = range(5)


@dataclass
class Cleaned:
    text: str                          # the clean text to chunk
    marks: list[tuple[int, int, int]]  # (offset in text, page, line), sorted by offset
    index_dropped_chars: int           # characters of the trailing word index dropped
    removed_lines: int                 # furniture lines removed (headers, footers, page numbers)


@dataclass(slots=True)
class _Line:
    raw: str           # the line, form feeds removed
    number: int = 0    # gutter number (0: none)
    text: str = ""     # the text after the gutter number
    column: int = 0    # where that text starts in the line
    kind: int = TEXT
    page: int = 0      # printed page number (counted when none is printed), for gutter lines


def clean(text: str) -> Cleaned | None:
    """The clean text of a paginated transcript, or None when the layout is not clear."""
    if len(text) > MAX_CLEANUP_CHARS or not text:
        return None
    layout = _layout(text.replace("\f", "").split("\n"))
    if layout is None:
        return None
    lines, pages = layout
    body_end = _index_start(lines, pages[-1][-1] + 1)
    numbers = _page_numbers(lines, pages, body_end)
    if numbers is None:
        numbers = _unprinted_page_numbers(text, lines, pages, body_end)
    if numbers is None:
        return None
    for run, number in zip(pages, numbers):
        for i in run:
            lines[i].kind, lines[i].page = GUTTER_LINE, number
    removed = _mark_furniture(lines[:body_end], pages)
    index_chars = len(text) - _offset(text, body_end)
    clean_text, marks = _assemble(lines[:body_end])
    return Cleaned(clean_text, marks, index_chars, removed)


def position(cleaned: Cleaned, offset: int) -> tuple[int, int]:
    """(page, line) of the character at offset: the last mark at or before it."""
    i = bisect_right(cleaned.marks, (offset, float("inf"), 0)) - 1
    _, page, line = cleaned.marks[max(i, 0)]
    return page, line


# ---- lines and pages ---------------------------------------------------------------
def _layout(raws: list[str]) -> tuple[list[_Line], list[list[int]]] | None:
    """The parsed lines and the clear pages of the gutter on the left of the text, else of the
    one on its right; None when neither gives clear pages."""
    for right in (False, True):
        if right and sum(raw.rstrip()[-1:].isdigit() for raw in raws) < MIN_PAGES * MIN_PAGE_LINES:
            return None  # too few lines end in a number to hold pages: not worth parsing again
        lines = [_parse(raw, right) for raw in raws]
        pages = _pages(lines)
        if _clear_pages(lines, pages):
            return lines, pages
        del lines  # before the second parse: one list of parsed lines at a time
    return None


def _parse(raw: str, right: bool = False) -> _Line:
    """One line: its gutter number (on the left of the text, or on its right) and its text."""
    line = _Line(raw)
    if not raw.strip():
        line.kind = BLANK
    elif right:
        _parse_right(line)
    else:
        _parse_left(line)
    return line


def _parse_left(line: _Line) -> None:
    m = GUTTER.match(line.raw)
    if m and int(m.group(1)) > 0:
        rest = line.raw[m.end():]
        line.number = int(m.group(1))
        line.text = rest.strip()
        line.column = m.end() + len(rest) - len(rest.lstrip()) if line.text else 0


def _parse_right(line: _Line) -> None:
    """A number at the end of the line, after any padding; the text's column is its indent."""
    m = RIGHT_GUTTER.search(line.raw)
    if m and int(m.group(1)) > 0:
        before = line.raw[:m.start()]
        line.number = int(m.group(1))
        line.text = before.strip()
        line.column = len(before) - len(before.lstrip()) if line.text else 0


def _pages(lines: list[_Line]) -> list[list[int]]:
    """Runs of numbered lines counting up from 1 (indexes into lines), long enough to be pages."""
    numbered = [i for i, line in enumerate(lines) if line.number]
    runs: list[list[int]] = []
    last = 0
    for j, i in enumerate(numbered):
        n = lines[i].number
        if runs and _continues(last, lines[i]):
            runs[-1].append(i)
        elif n <= MAX_SKIP and not (runs and len(runs[-1]) > 1 and j + 1 < len(numbered)
                                    and _continues(last, lines[numbered[j + 1]])):
            runs.append([i])  # a restart, unless the next numbered line goes on with this page
        else:
            continue
        last = n
    pages = [run for run in runs if len(run) >= MIN_PAGE_LINES]
    while pages and _index_run(lines, pages[-1]):
        pages.pop()
    return pages


def _index_run(lines: list[_Line], run: list[int]) -> bool:
    """Whether all text on a run's numbered lines is word-index entries: a run inside the
    index at the back (its section numbers 1, 2, 3 ... and entries ending in a number), not a page."""
    texts = [lines[i] for i in run if lines[i].text]
    return bool(texts) and all(_index_line(line) for line in texts)


def _clear_pages(lines: list[_Line], pages: list[list[int]]) -> bool:
    """Enough pages, of a page's length (the median), most of them with text on their lines."""
    if len(pages) < MIN_PAGES or sorted(map(len, pages))[len(pages) // 2] < TYPICAL_PAGE_LINES:
        return False
    return sum(any(lines[i].text for i in run) for run in pages) >= 0.5 * len(pages)


def _continues(last: int, line: _Line) -> bool:
    """Whether line's number goes on from last (a bare number, maybe a page number, only by one)."""
    skip = MAX_SKIP if line.text else 1
    return last < line.number <= min(last + skip, MAX_PAGE_LINES)


def _index_line(line: _Line) -> bool:
    words = line.raw.split()
    refs = sum(1 for w in words if REF.search(w))
    return refs > 0 and refs >= INDEX_LINE_SHARE * len(words)


def _index_start(lines: list[_Line], tail: int) -> int:
    """Where the trailing word index starts (after the last page of gutters), or len(lines)."""
    first = next((i for i in range(tail, len(lines)) if _index_line(lines[i])), None)
    if first is None:
        return len(lines)
    rest = [line for line in lines[first:] if line.kind != BLANK]
    hits = sum(1 for line in rest if _index_line(line))
    if hits >= MIN_INDEX_LINES and hits >= INDEX_SHARE * len(rest):
        return first
    return len(lines)


def _offset(text: str, line_index: int) -> int:
    """Offset in text of the start of line number line_index (0-based); len(text) past the end."""
    pos = 0
    for _ in range(line_index):
        pos = text.find("\n", pos) + 1
        if pos == 0:
            return len(text)
    return pos


# ---- page numbers --------------------------------------------------------------------
def _page_number(line: _Line) -> int | None:
    if line.kind == BLANK:
        return None
    m = PAGE_NUMBER.fullmatch(line.raw.strip())
    return int(m.group(1)) if m else None


def _gaps(lines: list[_Line], pages: list[list[int]], end: int) -> list[list[int]]:
    """The non-blank lines before the first page, between pages, and after the last (up to end)."""
    bounds = [-1] + [i for run in pages for i in (run[0], run[-1])] + [end]
    return [[i for i in range(bounds[2 * k] + 1, bounds[2 * k + 1]) if lines[i].kind != BLANK]
            for k in range(len(pages) + 1)]


def _page_numbers(lines: list[_Line], pages: list[list[int]], end: int) -> list[int] | None:
    """The printed page number of each page, or None when pages are not clearly numbered.

    Marks the page-number lines it uses (and the ones of pages without gutters) PAGE_NO.
    """
    gaps = _gaps(lines, pages, end)
    candidates = [[i for i in gap if _page_number(lines[i]) is not None] for gap in gaps]
    below = above = 0  # which page a lone page number sits closer to
    for k in range(1, len(pages)):
        if len(candidates[k]) == 1:
            where = gaps[k].index(candidates[k][0])
            below += where <= len(gaps[k]) - 1 - where
            above += where > len(gaps[k]) - 1 - where
    footer = below >= above
    chosen = [(candidates[k + 1][:1] if footer else candidates[k][-1:]) for k in range(len(pages))]
    printed = [_page_number(lines[c[0]]) if c else None for c in chosen]
    known = [n for n in printed if n is not None]
    steps = [b - a for a, b in zip(known, known[1:])]
    if (len(known) < PAGE_NUMBER_SHARE * len(pages) or any(s <= 0 for s in steps)
            or sum(s == 1 for s in steps) < 0.5 * len(steps)):
        return None
    numbers = _fill(printed)
    for c in chosen:
        for i in c:
            lines[i].kind = PAGE_NO
    _mark_stray_page_numbers(lines, candidates, numbers)
    return numbers


def _unprinted_page_numbers(text: str, lines: list[_Line], pages: list[list[int]],
                            end: int) -> list[int] | None:
    """Page numbers for pages that print none, or None when the pages are not clear without them.

    The pages must make up for the missing page numbers (see _even_pages). Each is
    numbered by the PDF page it is on (1 + the form feeds before it) when form feeds
    tell the pages apart, else by its place among the pages (1, 2, 3 ...)."""
    if not _even_pages(lines, pages, end):
        return None
    if "\f" in text:
        numbers = _sheets(text, [run[0] for run in pages])
        if all(a < b for a, b in zip(numbers, numbers[1:])):
            return numbers
    return list(range(1, len(pages) + 1))


def _even_pages(lines: list[_Line], pages: list[list[int]], end: int) -> bool:
    """Whether the pages are of one length and follow each other, as pages of a layout do.

    PAGE_NUMBER_SHARE of the pages (the last aside) end at the same line number (the
    page's length; numbered lists end where they end), and PAGE_NUMBER_SHARE of the
    gaps between pages hold at most MAX_GAP_LINES non-blank lines (a header or footer,
    not a text between two lists)."""
    lengths = Counter(lines[run[-1]].number for run in pages[:-1])
    same = lengths.most_common(1)[0][1]
    gaps = _gaps(lines, pages, end)[1:-1]
    close = sum(len(gap) <= MAX_GAP_LINES for gap in gaps)
    return same >= PAGE_NUMBER_SHARE * (len(pages) - 1) and close >= PAGE_NUMBER_SHARE * len(gaps)


def _sheets(text: str, line_indexes: list[int]) -> list[int]:
    """The PDF page each of these lines (ascending indexes) is on: 1 + the form feeds before its text."""
    sheets, line, pos, feeds = [], 0, 0, 0
    for index in line_indexes:
        while line < index:
            end = text.index("\n", pos) + 1
            feeds += text.count("\f", pos, end)
            pos, line = end, line + 1
        sheets.append(1 + feeds + LEADING_FEEDS.match(text, pos).end() - pos)
    return sheets


def _fill(printed: list[int | None]) -> list[int]:
    """Page numbers with the missing ones taken from a neighbour (+1 after, -1 before)."""
    numbers = list(printed)
    for k in range(1, len(numbers)):
        if numbers[k] is None and numbers[k - 1] is not None:
            numbers[k] = numbers[k - 1] + 1
    for k in range(len(numbers) - 2, -1, -1):
        if numbers[k] is None:
            numbers[k] = numbers[k + 1] - 1
    return numbers


def _mark_stray_page_numbers(lines: list[_Line], candidates: list[list[int]], numbers: list[int]) -> None:
    """Page numbers of pages without gutters (a broken page, the index's first page).

    A lone number in a gap is one when it lies strictly between the page numbers
    on either side of the gap (after the last page: at most MAX_SKIP above it).
    """
    for k, found in enumerate(candidates):
        before = numbers[k - 1] if k > 0 else 0
        after = numbers[k] if k < len(numbers) else before + MAX_SKIP + 1
        for i in found:
            if lines[i].kind != PAGE_NO and before < _page_number(lines[i]) < after:
                lines[i].kind = PAGE_NO


# ---- furniture -----------------------------------------------------------------------
def _furniture_key(line: _Line) -> str:
    return " ".join(re.sub(r"\d+", "#", line.raw).split()).lower()


def _mark_furniture(lines: list[_Line], pages: list[list[int]]) -> int:
    """Marks repeated header/footer lines FURNITURE; returns how many lines were removed.

    A line's text (digits aside) must recur between (or inside) that many different
    pages: a list repeated in one place is not a header."""
    starts = [run[0] for run in pages]
    outside = [(i, _furniture_key(line)) for i, line in enumerate(lines) if line.kind == TEXT]
    places = {(key, bisect_right(starts, i)) for i, key in outside}
    counts = Counter(key for key, _ in places)
    least = max(MIN_PAGES, FURNITURE_SHARE * len(pages))
    furniture = {key for key, n in counts.items() if n >= least}
    for i, key in outside:
        if key in furniture:
            lines[i].kind = FURNITURE
    return sum(1 for line in lines if line.kind in (FURNITURE, PAGE_NO))


# ---- clean text ----------------------------------------------------------------------
def _text_column(lines: list[_Line]) -> int:
    """The column where most gutter lines' text starts (continuation lines)."""
    columns = Counter(line.column for line in lines if line.kind == GUTTER_LINE and line.text)
    return columns.most_common(1)[0][0] if columns else 0


def _paragraphs(lines: list[_Line]) -> list[list[tuple[int, int, str]]]:
    """Paragraphs as lists of (page, line, words); page and line are 0 for lines without a gutter."""
    column = _text_column(lines)
    paragraphs: list[list[tuple[int, int, str]]] = [[]]
    for line in lines:
        if line.kind == GUTTER_LINE:
            words = " ".join(line.text.split())
            if not words:
                paragraphs.append([])
                continue
            starts = line.column > column + PARAGRAPH_INDENT or SPEAKER.match(words)
            piece = (line.page, line.number, words)
        elif line.kind == TEXT:
            words = " ".join(line.raw.split())
            starts = SPEAKER.match(words)
            piece = (0, 0, words)
        else:
            continue
        if starts:
            paragraphs.append([])
        paragraphs[-1].append(piece)
    return [p for p in paragraphs if p]


def _assemble(lines: list[_Line]) -> tuple[str, list[tuple[int, int, int]]]:
    parts: list[str] = []
    marks: list[tuple[int, int, int]] = []
    offset = 0
    for paragraph in _paragraphs(lines):
        if parts:
            parts.append("\n\n")
            offset += 2
        for j, (page, number, words) in enumerate(paragraph):
            if j:
                parts.append(" ")
                offset += 1
            if number:
                marks.append((offset, page, number))
            parts.append(words)
            offset += len(words)
    parts.append("\n")
    return "".join(parts), marks
