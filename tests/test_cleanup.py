"""Cleaning paginated transcripts: furniture and word index out, page:line citations in.

The truth is established independently of ingestion/text/page_layout.py: the real Supreme Court
transcripts are parsed here with their form feeds (one page each) and their fixed layout;
the synthetic ones in tests/fixtures/cleanup/ carry a .json with every line of speech
(see make_fixtures.py there; plain_numbers_at_line_end.txt is written by hand). Other
layouts (line numbers on the right, no page numbers) are made here from both.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from conftest import FIXTURES, REAL, SAMPLE_TRANSCRIPT

from ingestion.common import settings
from ingestion.text import chunking, file_chunks, page_layout, textfile
from ingestion.text.chunking import count_tokens
from ingestion.text.page_layout import clean, position

CLEANUP = FIXTURES / "cleanup"
SYNTHETIC = ["no_index", "index_like_speech", "broken_gutters", "long_pages"]
PLAIN = ["plain_meeting", "plain_paginated", "numbered_lists", "plain_numbers_at_line_end"]
FURNITURE = ["Alderson Reporting Company", "Official - Subject to Final Review",
             "Heritage Reporting Corporation", "(202) 628-4888", "DEPOSITION OF JANE DOE"]
END_OF_SPEECH = "above-entitled matter was submitted"
TURN = re.compile(r"(?:[A-Z][A-Z.'-]*[ \t]+){0,4}[A-Z][A-Z.'-]*:(?= |$)")


def words(text: str) -> str:
    return " ".join(text.split())


def real_speech(text: str) -> tuple[list[tuple[int, int, str]], str]:
    """(page, line, text) of every numbered line up to the end of the argument, and the rest
    of the file (the word index), read with the form feeds that separate the pages."""
    end = text.index("\f", text.index(END_OF_SPEECH))
    lines = []
    for page in text[:end].split("\f"):
        printed = [int(raw) for raw in page.split("\n") if re.fullmatch(r" {20,}\d+", raw)]
        assert len(printed) == 1, page[:200]
        for raw in page.split("\n"):
            m = re.fullmatch(r" ?(\d{1,2})(?: +(.*))?", raw)
            if m:
                lines.append((printed[0], int(m.group(1)), words(m.group(2) or "")))
    return lines, text[end:]


def synthetic(name: str) -> tuple[str, dict]:
    truth = json.loads((CLEANUP / f"{name}.json").read_text())
    truth["lines"] = [(page, line, words(text)) for page, line, text in truth["lines"]]
    return (CLEANUP / f"{name}.txt").read_text(), truth


def check_in_order_and_cited(cleaned, lines) -> int:
    """Every line's text follows the previous one in the clean text with only whitespace
    between (nothing lost, nothing added, order kept), and position() of its first
    character, of a word from its middle and of its last character is its own page and
    line. Lines without a line number (a broken gutter) are only checked for presence.
    Returns how many lines were cited."""
    text, cursor, cited = cleaned.text, 0, 0
    for page, line, quote in lines:
        if not quote:
            continue
        at = text.find(quote, cursor)
        assert at >= 0 and not text[cursor:at].strip(), (page, line, quote, text[cursor:at][:200])
        if line is not None:
            prefix = quote.split()[:len(quote.split()) // 2]
            middle = at + len(" ".join(prefix)) + (1 if prefix else 0)
            for offset in (at, middle, at + len(quote) - 1):
                assert position(cleaned, offset) == (page, line), (page, line, quote, offset)
            cited += 1
        cursor = at + len(quote)
    assert not text[cursor:].strip(), text[cursor:][:200]
    return cited


# ---- the real transcripts ----------------------------------------------------------------
@pytest.fixture(scope="module", params=REAL, ids=lambda p: p.name[-14:-4])
def real(request):
    text = request.param.read_text()
    return text, clean(text)


def test_real_transcripts_are_detected_and_lose_at_least_45_percent_of_their_tokens(real):
    text, cleaned = real
    assert cleaned is not None
    raw, kept = count_tokens(text), count_tokens(cleaned.text)
    print(f"tokens raw {raw}, clean {kept} ({1 - kept / raw:.0%} fewer)")
    assert kept <= 0.55 * raw


def test_real_transcripts_lose_no_word_of_the_speech_and_cite_every_line(real):
    text, cleaned = real
    lines, _ = real_speech(text)
    assert cleaned.text.split() == " ".join(t for _, _, t in lines).split()
    numbered = [line for line in lines if line[2]]
    assert check_in_order_and_cited(cleaned, lines) == len(numbered) == len(cleaned.marks)
    offsets = [m[0] for m in cleaned.marks]
    assert offsets == sorted(offsets)


def test_real_transcripts_keep_no_furniture_gutter_or_index(real):
    text, cleaned = real
    lines, index = real_speech(text)
    for furniture in FURNITURE:
        assert furniture not in cleaned.text
    # no gutter: every numbered line's text sits at its mark with nothing (a number) before it
    for (offset, page, line), (p, n, quote) in zip(cleaned.marks, [x for x in lines if x[2]]):
        assert (page, line) == (p, n) and cleaned.text.startswith(quote, offset)
        assert offset == 0 or cleaned.text[offset - 1] in " \n"
    # no word-index entry ("abide 45:3") of the back of the file survives
    entries = set(re.findall(r"[A-Za-z][\w'.-]* \d{1,3}:\d{1,2}", index))
    assert len(entries) > 500
    assert [e for e in entries if e in cleaned.text] == []
    assert cleaned.text.rstrip().endswith("submitted.)")
    # the index is dropped from its first line on; before it, its page's header and number
    head = index[:len(index) - cleaned.index_dropped_chars]
    assert re.fullmatch(r"\s*Official - Subject to Final Review\s+\d+\s*", head)
    # every page's header, number and footer; the index's first page adds a header and number
    assert cleaned.removed_lines == 3 * lines[-1][0] + 2


def test_real_transcripts_keep_speaker_turns_for_the_chunker(real):
    text, cleaned = real
    lines, _ = real_speech(text)
    turns = [t for _, _, t in lines if TURN.match(t)]
    assert len(turns) > 100
    paragraphs = cleaned.text.split("\n\n")
    assert all("\n" not in p.strip("\n") for p in paragraphs)  # one line per paragraph
    starts = [p for p in paragraphs if TURN.match(p)]
    assert [TURN.match(p).group() for p in starts] == [TURN.match(t).group() for t in turns]
    for paragraph in starts:
        assert chunking.TURN_START.match(paragraph) and chunking.SPEAKER_LINE.match(paragraph)
    assert "\n\nJUSTICE SCALIA: " in cleaned.text and "\n\nGENERAL VERRILLI: " in cleaned.text


# ---- synthetic transcripts ---------------------------------------------------------------
@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_transcripts_are_cleaned_without_losing_speech(name):
    text, truth = synthetic(name)
    cleaned = clean(text)
    assert cleaned is not None
    assert cleaned.text.split() == " ".join(t for _, _, t in truth["lines"]).split()
    numbered = [line for line in truth["lines"] if line[1] is not None]
    assert check_in_order_and_cited(cleaned, truth["lines"]) == len(numbered) == len(cleaned.marks)
    for furniture in FURNITURE:
        assert furniture not in cleaned.text
    assert (cleaned.index_dropped_chars > 0) == truth["index"]
    for kept in truth["kept"]:
        assert words(kept) in cleaned.text


def test_a_file_without_an_index_drops_nothing_as_index_and_page_26_follows_line_25():
    text, truth = synthetic("no_index")
    cleaned = clean(text)
    assert cleaned.index_dropped_chars == 0
    assert cleaned.removed_lines == 6 * 3
    assert {m[1] for m in cleaned.marks} == set(range(24, 30))  # the printed numbers, from 24
    assert position(cleaned, len(cleaned.text) - 2) == (29, 25)
    assert max(line for _, _, line in cleaned.marks) == 25
    assert (26, 25) in {m[1:] for m in cleaned.marks}


def test_a_page_number_printed_twice_goes_both_times():
    """Under the header (top right) and at the bottom: one is the page number, the other
    recurs on every page like a header."""
    text, truth = synthetic("no_index")
    numbers = iter(range(24, 30))
    text = re.sub("Heritage Reporting Corporation",
                  lambda m: f"{m.group()}\n{' ' * 70}{next(numbers)}", text)
    cleaned = clean(text)
    assert cleaned.text.split() == " ".join(t for _, _, t in truth["lines"]).split()
    assert cleaned.removed_lines == 6 * 4


@pytest.mark.parametrize("first", [24, 1])
def test_a_layout_without_indentation_is_cleaned_too(first):
    """Everything at column 0 (text extracted without layout): page numbers can no longer be
    told from gutter numbers by their indent. Page 26's number after line 25 reads as an
    empty line 26 (dropped; the number is filled in from its neighbours), and numbers 1-3
    after line 25 must not take the place of the next page's line 1."""
    text, truth = synthetic("no_index")
    text = re.sub(r"(?m)^ {38}(\d+)$", lambda m: str(int(m.group(1)) - 24 + first), text)
    text = "\n".join(line.lstrip() for line in text.split("\n"))
    lines = [(page - 24 + first, line, t) for page, line, t in truth["lines"]]
    cleaned = clean(text)
    assert cleaned is not None
    assert cleaned.text.split() == " ".join(t for _, _, t in lines).split()
    assert check_in_order_and_cited(cleaned, lines) == len(lines) == len(cleaned.marks)
    assert "Heritage" not in cleaned.text


def test_references_read_out_in_the_speech_stay_and_the_index_after_it_goes():
    text, truth = synthetic("index_like_speech")
    cleaned = clean(text)
    index = text[len(text) - cleaned.index_dropped_chars:]
    assert re.match(r"[a-z]+ \d+:\d+", index)  # starts at the first index line
    assert "THE WITNESS" not in index and "THE WITNESS" in cleaned.text
    at = cleaned.text.index("abide 45:3, agency 59:24")
    assert position(cleaned, at) == (45, 10)
    assert position(cleaned, cleaned.text.index("12 14 16 18 20 22 24")) == (45, 13)
    assert position(cleaned, cleaned.text.index("45:3 59:24 3:4 4:19 43:8")) == (45, 15)
    # the witness's turn is one paragraph, after a blank line
    assert re.search(r"\n\nTHE WITNESS: I will read .*45:3 59:24 3:4 4:19 43:8", cleaned.text)


def test_a_short_index_like_tail_is_not_dropped():
    text, truth = synthetic("no_index")
    tail = "".join(f"abide {i}:3 agency 59:{i}\n" for i in range(1, 11))
    cleaned = clean(text + tail)
    assert cleaned.index_dropped_chars == 0
    assert "abide 10:3 agency 59:10" in cleaned.text


def test_broken_gutters_are_cleaned_where_clear_and_lose_nothing():
    text, truth = synthetic("broken_gutters")
    cleaned = clean(text)
    cited_pages = {m[1] for m in cleaned.marks}
    assert cited_pages == {1, 2, 4, 6, 7}  # page 3 has no gutter; page 5's came out as a block
    page4 = [m[2] for m in cleaned.marks if m[1] == 4]
    assert page4 == [n for n in range(1, 26) if n not in (5, 8, 17)]
    assert "2 million dollars were paid" in cleaned.text  # an unnumbered line starting with a number
    assert cleaned.removed_lines == 7 * 3  # every page's header, number and footer, broken or not
    assert not re.search(r"\b1 2 3 4 5\b", cleaned.text)  # page 5's block of gutter numbers


def test_pages_of_26_and_28_lines_numbered_at_the_top():
    text, truth = synthetic("long_pages")
    cleaned = clean(text)
    last = {}
    for _, page, line in cleaned.marks:
        last[page] = max(last.get(page, 0), line)
    assert last == {7: 26, 8: 28, 9: 26, 10: 28, 11: 26, 12: 28}
    assert "Page" not in cleaned.text
    # Q/A paragraphs are one line each, a blank line apart
    assert all(p.startswith(("Q. ", "A. ")) for p in cleaned.text.split("\n\n")[1:])


# ---- left alone ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    SAMPLE_TRANSCRIPT,
    *[(CLEANUP / f"{name}.txt").read_text() for name in PLAIN],
    "", "\n", "1\n2\n3\n", "JUSTICE SCALIA: Yes.\n",
], ids=["sample", *PLAIN, "empty", "newline", "numbers", "one-turn"])
def test_plain_transcripts_are_left_alone(text):
    assert clean(text) is None


def test_files_over_the_size_limit_are_not_cleaned(monkeypatch):
    text = REAL[0].read_text()
    monkeypatch.setattr(page_layout, "MAX_CLEANUP_CHARS", len(text) - 1)
    assert clean(text) is None


def test_position_of_offsets_between_and_before_marks():
    text, _ = synthetic("no_index")
    cleaned = clean(text)
    first, second = cleaned.marks[0], cleaned.marks[1]
    assert position(cleaned, 0) == first[1:]
    assert position(cleaned, second[0] - 1) == first[1:]  # the separator belongs to the line before
    assert position(cleaned, second[0]) == second[1:]
    assert position(cleaned, len(cleaned.text) + 100) == cleaned.marks[-1][1:]


# ---- line numbers on the right, pages without page numbers ----------------------------------
# Ways a gutter number can end a line: (text with its indent, number) -> line.
PADDINGS = {
    "aligned": lambda text, n: f"{text:<72}{n:>3}",  # right-aligned in a column
    "tabs": lambda text, n: f"{text}\t{n}",
    "ragged": lambda text, n: text + [" ", "    ", "\t", " \t ", "         "][n % 5] + str(n),
    "one_space": lambda text, n: f"{text.strip()} {n}".lstrip(),  # extracted without layout
}
RIGHT_SYNTHETIC = ["no_index", "index_like_speech", "long_pages"]  # not broken_gutters: "2 million" would move


def gutter_to_right(text: str, pad) -> str:
    """The text with every left gutter number (at most 6 columns in) moved to the end of its line."""
    return re.sub(r"(?m)^(\f?) {0,6}(\d{1,2})((?: +.*)?)$",
                  lambda m: m.group(1) + pad(m.group(3).rstrip(), int(m.group(2))), text)


def real_to_right(text: str, pad) -> str:
    """A real transcript with its line numbers on the right (its word index left as it is)."""
    end = text.index("\f", text.index(END_OF_SPEECH))
    return gutter_to_right(text[:end], pad) + text[end:]


def without_page_numbers(text: str) -> str:
    """The text without its page-number lines (`24`, `Page 7`, 20 or more columns in)."""
    return re.sub(r"(?m)^ {20,}(?:Page )?\d+$", "", text)


def without_furniture(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if line.strip("\f").strip() not in FURNITURE)


def check_speech(cleaned, lines) -> None:
    """Every word of the speech, nothing else, every numbered line cited, no furniture."""
    assert cleaned is not None
    assert cleaned.text.split() == " ".join(t for _, _, t in lines).split()
    numbered = [line for line in lines if line[1] is not None and line[2]]
    assert check_in_order_and_cited(cleaned, lines) == len(numbered) == len(cleaned.marks)
    for furniture in FURNITURE:
        assert furniture not in cleaned.text


def in_page_order(lines):
    """The lines with each page cited by its place among the pages (1, 2, 3 ...)."""
    order = {page: k for k, page in enumerate(dict.fromkeys(page for page, _, _ in lines), 1)}
    return [(order[page], line, t) for page, line, t in lines]


@pytest.mark.parametrize("padding", PADDINGS)
def test_real_transcripts_with_line_numbers_on_the_right_are_cleaned_and_cited(real, padding):
    text, _ = real
    lines, index = real_speech(text)
    cleaned = clean(real_to_right(text, PADDINGS[padding]))
    check_speech(cleaned, lines)
    # every page's header, number and footer (page 26's number, right after line 25, reads as an
    # empty line 26 and goes with the gutter)
    assert cleaned.removed_lines >= 3 * lines[-1][0]
    entries = set(re.findall(r"[A-Za-z][\w'.-]* \d{1,3}:\d{1,2}", index))
    assert [e for e in entries if e in cleaned.text] == []
    assert cleaned.text.rstrip().endswith("submitted.)")
    assert "\n\nJUSTICE SCALIA: " in cleaned.text


@pytest.mark.parametrize("form_feeds", [True, False], ids=["form_feeds", "no_form_feeds"])
@pytest.mark.parametrize("headers", [True, False], ids=["headers", "no_headers"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_real_transcripts_without_page_numbers_are_cleaned_and_cited_by_page_order(real, side, headers,
                                                                                  form_feeds):
    """The first page of the file is printed page 1, so the page's place is its printed number."""
    text, _ = real
    lines, _ = real_speech(text)
    text = without_page_numbers(text)
    if side == "right":
        text = real_to_right(text, PADDINGS["ragged"])
    if not headers:
        text = without_furniture(text)
    if not form_feeds:
        text = text.replace("\f", "")
    cleaned = clean(text)
    check_speech(cleaned, lines)
    assert cleaned.removed_lines == (2 * lines[-1][0] + 1 if headers else 0)  # + the index's header
    assert cleaned.text.rstrip().endswith("submitted.)")


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("name", RIGHT_SYNTHETIC)
def test_synthetic_transcripts_with_line_numbers_on_the_right_are_cleaned(name, padding):
    text, truth = synthetic(name)
    cleaned = clean(gutter_to_right(text, PADDINGS[padding]))
    check_speech(cleaned, truth["lines"])
    assert "Page" not in cleaned.text
    assert (cleaned.index_dropped_chars > 0) == truth["index"]
    for kept in truth["kept"]:  # references a witness reads out stay, on their own line
        assert words(kept) in cleaned.text


@pytest.mark.parametrize("side", ["left", "right"])
def test_pages_without_page_numbers_are_cited_by_pdf_page_else_by_their_order(side):
    """Six pages printed 24-29, their numbers gone, after a cover page without line numbers:
    with form feeds the pages are the PDF's pages 2-7, without them the gutters' pages 1-6."""
    text, truth = synthetic("no_index")
    text = "TRANSCRIPT OF PROCEEDINGS\n\nVolume II\n\f" + without_page_numbers(text)
    if side == "right":
        text = gutter_to_right(text, PADDINGS["aligned"])
    cover = [(0, None, "TRANSCRIPT OF PROCEEDINGS"), (0, None, "Volume II")]  # kept, not cited
    by_order = cover + in_page_order(truth["lines"])
    by_pdf_page = cover + [(page + 1, line, t) for page, line, t in in_page_order(truth["lines"])]
    check_speech(clean(text), by_pdf_page)
    check_speech(clean(text.replace("\f", "")), by_order)
    assert clean(text).removed_lines == 6 * 2  # header and footer; no page number to remove


@pytest.mark.parametrize("side", ["left", "right"])
def test_pages_of_varying_length_without_page_numbers_are_left_alone(side):
    """Pages of 26 and 28 lines could be numbered lists; only page numbers make them pages."""
    text, _ = synthetic("long_pages")
    text = without_page_numbers(text)
    if side == "right":
        text = gutter_to_right(text, PADDINGS["tabs"])
    assert clean(text) is None


WORDS = "agenda budget harbour dredging survey report schedule contract vote council motion".split()
DISCUSSION = [f"ALICE: We went through {word} and the {other} again, and agreed to come back to it."
              for word, other in zip(WORDS, reversed(WORDS))]


def numbered_list(side: str, length: int, seed: int) -> list[str]:
    """A list of items numbered from 1, the number before the item or after it."""
    items = [" ".join(WORDS[(seed * 7 + n * k) % len(WORDS)] for k in range(1, 7))
             for n in range(1, length + 1)]
    return [f"{n} {item}" if side == "left" else f"{item:<60} {n}" for n, item in enumerate(items, 1)]


@pytest.mark.parametrize("side", ["left", "right"])
def test_numbered_lists_of_one_length_between_discussion_are_left_alone(side):
    """Lists of 25 items, as long as a page, but with a discussion between them, not a page's
    header and footer."""
    text = "\n\n".join("\n".join([*DISCUSSION, *numbered_list(side, 25, k)]) for k in range(4))
    assert clean(text + "\n") is None


@pytest.mark.parametrize("side", ["left", "right"])
def test_numbered_lists_of_different_lengths_back_to_back_are_left_alone(side):
    text = "\n".join(line for k, n in enumerate((22, 25, 30, 24))
                     for line in (f"List {k}", *numbered_list(side, n, k)))
    assert clean(text + "\n") is None


ADVERSARIAL = (CLEANUP / "plain_numbers_at_line_end.txt").read_text()


@pytest.mark.parametrize("text", [
    ADVERSARIAL, "\f".join([ADVERSARIAL] * 4),
    "".join(f"BOB: the vote was {s % 9 + 1} to {s % 5}, noted at 00:{m:02d}:{s:02d}\n"
            for m in range(4) for s in range(1, 26)),
    "".join(f"Race {k}, round {n}: lap time {n % 7 + 50}, position {n}\n" for k in range(4)
            for n in range(1, 18 + 3 * k)),
], ids=["numbers_at_line_end", "four_pages", "timestamps", "rounds"])
def test_plain_transcripts_with_numbers_at_line_ends_are_cut_as_with_cleanup_off(tmp_path, text):
    path = tmp_path / "plain.txt"
    path.write_text(text)
    info, cfg = textfile.inspect(path), settings.load()
    auto = [(c.chunk, c.citation) for c in file_chunks.file_chunks(replace(cfg, text_cleanup="auto"), path, info)]
    off = [(c.chunk, c.citation) for c in file_chunks.file_chunks(replace(cfg, text_cleanup="off"), path, info)]
    assert clean(text) is None
    assert auto == off
