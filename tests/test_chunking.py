"""Unit tests for the chunker: the hard bound, natural boundaries, overlap, metadata, odd text."""
from __future__ import annotations

import random

import pytest

from conftest import REAL, SAMPLE_TRANSCRIPT
from ingestion import chunking
from ingestion.chunking import count_tokens, iter_chunks


def chunks_of(text, max_tokens=500, overlap=50, block=4096):
    return list(iter_chunks([text[i:i + block] for i in range(0, len(text), block)], max_tokens, overlap))


@pytest.mark.parametrize("max_tokens", [40, 100, 500])
def test_every_chunk_is_within_the_bound_on_real_transcripts(max_tokens):
    text = REAL[0].read_text()
    chunks = chunks_of(text, max_tokens, max_tokens // 10)
    assert chunks
    for c in chunks:
        assert c.token_count == count_tokens(c.text) <= max_tokens
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_nothing_is_lost_without_overlap():
    text = REAL[1].read_text()
    chunks = chunks_of(text, 200, 0)
    squash = lambda s: "".join(s.split())  # noqa: E731
    assert squash("".join(c.text for c in chunks)) == squash(text)


def test_overlap_repeats_the_end_of_the_previous_chunk():
    text = " ".join(f"Sentence number {i} is here." for i in range(400))
    chunks = chunks_of(text, 100, 30)
    for a, b in zip(chunks, chunks[1:]):
        head = b.text.split(".")[0]
        assert head in a.text
    assert chunks_of(text, 100, 0)[1].text.split(".")[0] not in chunks_of(text, 100, 0)[0].text


def test_chunks_end_at_speaker_turns_when_one_is_near():
    turns = [f"SPEAKER{i % 3}: " + " ".join(["words"] * random.Random(i).randint(30, 80)) + "." for i in range(60)]
    text = "\n\n".join(turns)
    chunks = chunks_of(text, 300, 0)
    starts_at_turn = sum(c.text.startswith("SPEAKER") for c in chunks)
    assert starts_at_turn == len(chunks)


def test_sentences_beat_words_inside_a_long_paragraph():
    text = " ".join(f"This is sentence {i} and it has a few words in it." for i in range(300))
    for c in chunks_of(text, 120, 0):
        assert c.text.endswith(".")


def test_timestamps_and_speakers():
    chunks = chunks_of(SAMPLE_TRANSCRIPT, 40, 0)
    assert chunks[0].start_time == "00:00:01" and chunks[0].speakers[0] == "ALICE"
    carol = next(c for c in chunks if "CAROL" in c.text)
    assert "CAROL" in carol.speakers
    # a chunk without its own timestamp carries the last one seen, for citing the recording
    assert all(c.start_time for c in chunks)


def test_supreme_court_speakers_are_found_despite_line_numbers():
    chunks = chunks_of(REAL[0].read_text())
    speakers = {s for c in chunks for s in c.speakers}
    assert {"CHIEF JUSTICE ROBERTS", "MR. LONG"} <= speakers


def test_a_word_longer_than_the_limit_is_cut_exactly():
    word = "x" * 50_000 + "é" * 3000
    chunks = chunks_of(word, 100, 10)
    assert "".join(c.text for c in chunks) == word
    assert all(c.token_count <= 100 for c in chunks)


def test_token_dense_text_and_emoji():
    text = "😀" * 5000 + "日本語のテキスト" * 2000
    chunks = chunks_of(text, 64, 8)
    assert all(c.token_count <= 64 for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_whitespace_only_gives_no_chunk():
    assert chunks_of("   \n\n\t  \n") == []
    assert chunks_of("") == []


def test_special_token_text_is_plain_text():
    chunks = chunks_of("hello <|endoftext|> world")
    assert chunks[0].text == "hello <|endoftext|> world"


def test_deterministic_and_independent_of_block_size():
    text = REAL[1].read_text()[:80_000]
    a = [c.text for c in chunks_of(text, 300, 30, block=1000)]
    b = [c.text for c in chunks_of(text, 300, 30, block=65536)]
    assert a == b


def test_random_text_never_breaks_the_bound():
    rnd = random.Random(7)
    words = ["alpha", "beta.", "GAMMA:", "\n", "\n\n", "[00:01:02]", "日本", "😀", "z" * 700, "  ", "\r\n"]
    text = " ".join(rnd.choice(words) for _ in range(30_000))
    for c in chunks_of(text, 50, 10, block=777):
        assert 0 < c.token_count == count_tokens(c.text) <= 50


def test_sections_cut_huge_lines():
    parts = list(chunking.sections(["a" * (chunking.SECTION_CHARS * 2 + 5)]))
    assert "".join(parts) == "a" * (chunking.SECTION_CHARS * 2 + 5)
    assert max(map(len, parts)) <= chunking.SECTION_CHARS
