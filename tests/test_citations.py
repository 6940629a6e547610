"""Paginated transcripts through the whole pipeline: furniture and word index out, page:line in.

The truth comes from the original files read independently (test_cleanup.real_speech: the
form feeds between pages, the printed page numbers, the gutters), not from ingestion/text/page_layout.py.
"""
from __future__ import annotations

import json
import re

import tiktoken
from conftest import SAMPLE_TRANSCRIPT
from test_cleanup import FURNITURE, real_speech, words

ENC = tiktoken.get_encoding("cl100k_base")


def test_real_transcripts_are_cleaned_cited_and_cost_under_55_percent(project, api):
    real = project.add_real()
    project.ingest_all(CHROMA_COLLECTION="raw", TEXT_CLEANUP="off")
    raw_tokens = api.stats()["tokens"]
    api.reset()
    project.ingest_all()
    clean_tokens = api.stats()["tokens"]
    assert clean_tokens <= 0.55 * raw_tokens, (clean_tokens, raw_tokens)

    chunks = project.chunks()
    for path in real:
        speech, index = real_speech(path.read_text())
        mine = [(d, m) for d, m in chunks.values() if m["source"] == str(path)]
        assert mine
        index_lines = [words(x) for x in index.split("\n") if re.search(r"\d+:\d+", x) and len(words(x)) > 12]
        assert len(index_lines) > 100
        for doc, meta in mine:
            assert len(ENC.encode_ordinary(doc)) <= 500
            assert not any(f in doc for f in FURNITURE), doc[:200]
            assert not re.search(r"(?:^|\s)\d{1,2}\s+\d{1,2}\s+\d{1,2}\s", doc), doc[:200]  # no run of gutter numbers
            assert all(isinstance(meta[k], int) for k in ("page_start", "line_start", "page_end", "line_end"))
            assert (meta["page_start"], meta["line_start"]) <= (meta["page_end"], meta["line_end"])
        text = "\n".join(words(d) for d, _ in mine)
        assert not any(line in text for line in index_lines)
        # every numbered line of speech long enough to be unique is in a chunk whose range holds it
        cited = 0
        for page, line, quote in speech:
            if len(quote) < 40 or sum(quote in words(d) for d, _ in mine) == 0:
                continue
            holders = [m for d, m in mine if quote in words(d)]
            assert any((m["page_start"], m["line_start"]) <= (page, line) <= (m["page_end"], m["line_end"])
                       for m in holders), (page, line, quote, [(m["page_start"], m["line_start"], m["page_end"],
                                                                m["line_end"]) for m in holders])
            cited += 1
        assert cited > 0.8 * sum(1 for _, _, q in speech if len(q) >= 40)

    q = project.run("query_chromadb.py", "the Anti-Injunction Act and the penalty", "-k", "2", "--json")
    assert q.returncode == 0, q.stderr
    assert all(re.fullmatch(r"\d+:\d+(-\d+:\d+)?", h["citation"]) for h in json.loads(q.stdout))
    text = project.run("query_chromadb.py", "the Anti-Injunction Act", "-k", "1").stdout
    assert re.search(r"chunk \d+, \d+:\d+", text), text


def test_plain_transcripts_are_cut_exactly_as_without_cleanup(project, api):
    project.add("sample.txt", SAMPLE_TRANSCRIPT * 30)
    project.add("notes.txt", "Minutes.\n\n1. Budget 12:30 approved.\n2. Schedule 14:3 moved.\n" * 50)
    project.ingest_all(CHROMA_COLLECTION="plain_off", TEXT_CLEANUP="off")
    off = {k: (d, {x: y for x, y in m.items() if x != "ingested_at"})
           for k, (d, m) in project.chunks("plain_off").items()}
    project.ingest_all()
    auto = {k: (d, {x: y for x, y in m.items() if x != "ingested_at"}) for k, (d, m) in project.chunks().items()}
    assert auto == off
    assert not any("page_start" in m for _, m in auto.values())


def test_dry_run_says_what_cleanup_saves(project, api):
    project.add_real()
    r = project.run("generate_file_queue.py", "--dry-run")
    assert r.returncode == 0, r.stderr
    saved = int(re.search(r"text cleanup saved ([\d,]+) tokens", r.stdout).group(1).replace(",", ""))
    estimate = int(re.search(r"([\d,]+) tokens to embed", r.stdout).group(1).replace(",", ""))
    assert saved > estimate  # more than half of the raw tokens were furniture and index
    project.ingest_all()
    assert abs(api.stats()["tokens"] - estimate) <= 0.02 * estimate
