"""Unit tests for the chunker: the hard bound, natural boundaries, overlap, metadata, odd text."""
from __future__ import annotations

import json
import random

import pytest
from conftest import FIXTURES, REAL, SAMPLE_TRANSCRIPT

from ingestion.text import chunking, textfile
from ingestion.text.chunking import count_tokens, iter_chunks


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


# ---- golden outputs: the chunks of the chunker before its token-offset rewrite ----------
GOLDEN = sorted((FIXTURES / "chunks_golden").glob("*.json"))


def golden_input(source: dict) -> tuple[str, list[str] | None]:
    """(whole text, blocks to feed, or None for a file read through textfile)."""
    if "file" in source:
        path = FIXTURES / source["file"]
        return "".join(textfile.iter_text(path, textfile.inspect(path))), None
    text, block = source["text"], source["block"]
    return text, [text[i:i + block] for i in range(0, len(text), block)]


def golden_chunks(source: dict, max_tokens: int, overlap: int) -> list:
    if "file" in source:
        path = FIXTURES / source["file"]
        return list(iter_chunks(textfile.iter_text(path, textfile.inspect(path)), max_tokens, overlap))
    _, blocks = golden_input(source)
    return list(iter_chunks(blocks, max_tokens, overlap))


def test_golden_files_cover_the_real_transcripts_and_the_synthetic_inputs():
    names = {p.stem for p in GOLDEN}
    assert len([n for n in names if n.startswith("real_")]) == len(REAL) == 2
    assert {"sample_transcript", "huge_line", "long_sentences", "crlf_normalised", "timestamps"} <= names
    sample = json.loads((FIXTURES / "chunks_golden" / "sample_transcript.json").read_text(encoding="utf-8"))
    assert sample["source"]["text"] == SAMPLE_TRANSCRIPT
    crlf = json.loads((FIXTURES / "chunks_golden" / "crlf_normalised.json").read_text(encoding="utf-8"))
    assert "\r" not in crlf["source"]["text"] and crlf["source"]["text"].count("\n") > 400


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_chunks_match_the_golden_outputs_exactly(path):
    golden = json.loads(path.read_text(encoding="utf-8"))
    assert {(r["max_tokens"], r["overlap_tokens"]) for r in golden["runs"]} == {(500, 50), (200, 20), (64, 0)}
    for run in golden["runs"]:
        got = [{"index": c.index, "text": c.text, "token_count": c.token_count, "start_time": c.start_time,
                "speakers": c.speakers}
               for c in golden_chunks(golden["source"], run["max_tokens"], run["overlap_tokens"])]
        want = run["chunks"]
        first_diff = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        assert got == want, (f"{path.stem} {run['max_tokens']}/{run['overlap_tokens']}: first difference at "
                             f"chunk {first_diff} of {len(want)} (got {len(got)})")


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_chunk_offsets_point_at_the_chunk_text(path):
    golden = json.loads(path.read_text(encoding="utf-8"))
    whole, _ = golden_input(golden["source"])
    for max_tokens, overlap in [(500, 50), (64, 0)]:
        chunks = golden_chunks(golden["source"], max_tokens, overlap)
        assert chunks
        for c in chunks:
            assert 0 <= c.start < c.end <= len(whole)
            assert whole[c.start:c.end] == c.text
        assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_chunk_offsets_with_odd_blocks_and_line_ends():
    rnd = random.Random(3)
    words = ["alpha", "beta.", "GAMMA:", "\n", "\n\n", "[00:01:02]", "日本", "😀", "z" * 300, "  ", "\r\n",
             "\x0c", "\u2028", "\xa0", "x" * 3000, "it's", "42."]
    text = "  \n" + " ".join(rnd.choice(words) for _ in range(4000)) + "\n\n  "
    for block in (1, 777, 1 << 20):
        chunks = chunks_of(text, 50, 10, block=block)
        for c in chunks:
            assert text[c.start:c.end] == c.text and c.token_count == count_tokens(c.text) <= 50


def test_counts_read_off_token_offsets_are_exact():
    """The chunker's counts of any span equal tiktoken's count of that span encoded alone."""
    rnd = random.Random(5)
    odd = json.loads((FIXTURES / "chunks_golden" / "odd_whitespace.json").read_text(encoding="utf-8"))
    texts = [REAL[0].read_text()[:40_000], odd["source"]["text"][:40_000]]
    for text in texts:
        chunker = chunking.Chunker(500, 50)
        list(chunker.feed(text))
        for _ in range(3000):
            a = rnd.randrange(len(text))
            b = min(len(text), a + rnd.choice([1, 5, 30, 200, 2000]))
            assert chunker._count(a, b) == count_tokens(text[a:b]), (a, b, text[a:b])


def test_chunker_version_is_recorded():
    assert chunking.CHUNKER_VERSION == 1


@pytest.mark.parametrize("pattern", ["ab1", "ab,"])  # no sync point at all / one every 3 characters
def test_a_huge_line_is_chunked_in_bounded_memory(pattern):
    """Megabytes on one line without a space: chunks keep coming, the text is never held whole.

    (20 MB take about as long per MB as this, checked by hand: too slow for the suite.)
    """
    block = pattern * (1 << 16)
    blocks = [block] * 8  # 1.5 MB in 12 sections
    chunker = chunking.Chunker(500, 50)
    held = fed = 0
    text_back = []
    for section in chunking.sections(blocks):
        fed += len(section)
        for c in chunker.feed(section):
            assert c.token_count <= 500
            text_back.append(c.text)
        held = max(held, len(chunker._buf))
    text_back.extend(c.text for c in chunker.finish())
    assert fed == len(block) * 8 and len(text_back) > fed // 2000
    assert held <= 2 * chunking.SECTION_CHARS


def test_counts_stay_exact_across_many_small_sections(monkeypatch):
    """Chunks spanning sections and tokenized regions, non-ASCII text, the held text trimmed."""
    monkeypatch.setattr(chunking, "SECTION_CHARS", 300)
    monkeypatch.setattr(chunking, "_CARRY_CHARS", 200)
    rnd = random.Random(11)
    words = ["é", "日本語", "word", "Word.", " ", " ", "\n", "\n\n", ".", "😀", "x" * 40, "ab,",
             "ü" * 300, "z" * 500]
    text = "".join(rnd.choice(words) for _ in range(6000))
    for max_tokens, overlap in [(40, 10), (100, 0)]:
        chunks = chunks_of(text, max_tokens, overlap, block=1000)
        for c in chunks:
            assert text[c.start:c.end] == c.text
            assert 0 < c.token_count == count_tokens(c.text) <= max_tokens
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())


def test_token_lengths_table_matches_tiktoken():
    enc = chunking.encoding()
    table = chunking._lengths(enc)
    tokens = set(enc.encode_ordinary(REAL[0].read_text()[:20_000] + "é日本語😀\xad \n\t  x" * 3))
    assert all(table[t] == len(enc.decode_single_token_bytes(t)) for t in tokens)
