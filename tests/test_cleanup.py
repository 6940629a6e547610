"""Cleaning paginated transcripts: furniture and word index out, page:line citations in.

The truth is established independently of ingestion/cleanup.py: the real Supreme Court
transcripts are parsed here with their form feeds (one page each) and their fixed layout;
the synthetic ones in tests/fixtures/cleanup/ carry a .json with every line of speech
(see make_fixtures.py there).
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import FIXTURES, REAL, SAMPLE_TRANSCRIPT
from ingestion import chunking, cleanup
from ingestion.chunking import count_tokens
from ingestion.cleanup import clean, position

CLEANUP = FIXTURES / "cleanup"
SYNTHETIC = ["no_index", "index_like_speech", "broken_gutters", "long_pages"]
PLAIN = ["plain_meeting", "plain_paginated", "numbered_lists"]
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


def test_a_paginated_file_without_page_numbers_is_left_alone():
    text, _ = synthetic("no_index")
    assert clean(re.sub(r"(?m)^ {38}\d+$", "", text)) is None


def test_files_over_the_size_limit_are_not_cleaned(monkeypatch):
    text = REAL[0].read_text()
    monkeypatch.setattr(cleanup, "MAX_CLEANUP_CHARS", len(text) - 1)
    assert clean(text) is None


def test_position_of_offsets_between_and_before_marks():
    text, _ = synthetic("no_index")
    cleaned = clean(text)
    first, second = cleaned.marks[0], cleaned.marks[1]
    assert position(cleaned, 0) == first[1:]
    assert position(cleaned, second[0] - 1) == first[1:]  # the separator belongs to the line before
    assert position(cleaned, second[0]) == second[1:]
    assert position(cleaned, len(cleaned.text) + 100) == cleaned.marks[-1][1:]
