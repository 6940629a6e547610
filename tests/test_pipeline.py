"""The user's path end to end: generate the queue, run the worker, optimize, re-run, edit."""
from __future__ import annotations

import json
import subprocess
import sys

import tiktoken
from conftest import API_KEY, SAMPLE_TRANSCRIPT

from ingestion.storage import schema

ENC = tiktoken.get_encoding("cl100k_base")


def test_full_run_stores_every_file_within_the_token_bound(project, api):
    real = project.add_real()
    sample = project.add("meetings/2024/harbour.txt", SAMPLE_TRANSCRIPT)
    result = project.ingest_all()

    q = project.queue
    assert sorted(q["completed"]) == sorted(str(p) for p in real + [sample])
    assert q["pending"] == q["processing"] == q["failed"] == []
    assert "3 completed" in result.stdout
    chunks = project.chunks()
    sources = {m["source"] for _, m in chunks.values()}
    assert sources == {str(p) for p in real + [sample]}
    for doc, meta in chunks.values():
        assert len(ENC.encode_ordinary(doc)) <= 500
        assert meta["token_count"] == len(ENC.encode_ordinary(doc))
        for key, kind in {**schema.REQUIRED, **schema.ALWAYS}.items():
            assert isinstance(meta[key], kind), key
    # every token the API saw belongs to a stored chunk: nothing embedded twice
    assert api.stats()["tokens"] == sum(m["token_count"] for _, m in chunks.values())
    # the sample carries timestamps and speakers
    sample_chunks = [m for _, m in chunks.values() if m["source"] == str(sample)]
    assert sample_chunks[0]["start_time"] == "00:00:01"
    assert {"ALICE", "BOB", "CAROL"} <= set(sample_chunks[0]["speakers"].split(", "))
    done = project.checkpoint["processed_files"]
    assert set(done) == {str(p) for p in real + [sample]}
    assert all(d["status"] == "completed" and d["timestamp"] for d in done.values())


def test_rerun_makes_no_request_and_changes_nothing(project, api):
    project.add_real()
    project.ingest_all()
    before = project.content()
    api.reset()

    gen = project.run("generate_file_queue.py")
    assert "0 new, 0 changed, 2 unchanged" in gen.stdout
    again = project.ingest_all()
    assert "0 files run" in again.stdout
    assert api.stats()["requests"] == 0
    assert project.content() == before


def test_edited_file_is_the_only_one_reembedded_and_its_old_chunks_go(project, api):
    real = project.add_real()
    project.ingest_all()
    old_ids = {i for i, (_, m) in project.chunks().items() if m["source"] == str(real[0])}
    api.reset()

    text = real[0].read_text()
    # one word, never split over two lines (cleanup joins a speaker's lines into paragraphs)
    edited = text.replace("Anti-Injunction", "Tax-Anti-Injunction-Statute")
    real[0].write_text("PREFACE: a new opening paragraph.\n\n" + edited)
    gen = project.run("generate_file_queue.py")
    assert "1 changed" in gen.stdout
    project.ingest_all()

    chunks = project.chunks()
    mine = {i: (d, m) for i, (d, m) in chunks.items() if m["source"] == str(real[0])}
    assert all("the Anti-Injunction" not in d for d, _ in mine.values())
    assert any("Tax-Anti-Injunction-Statute" in d for d, _ in mine.values())
    new_tokens = sum(m["token_count"] for i, (_, m) in mine.items() if i not in old_ids)
    # only chunks whose text changed were sent; the other file was not touched
    assert 0 < api.stats()["tokens"] <= new_tokens
    assert all(m["file_sha256"] == project.checkpoint["processed_files"][str(real[0])]["file_sha256"]
               for _, m in mine.values())


def test_optimize_removes_duplicates_flags_chunks_and_is_idempotent(project, api):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.add("copy/a-again.txt", SAMPLE_TRANSCRIPT)
    project.add("b.txt", "DAVE: Something else entirely, about trains and timetables.\n")
    project.ingest_all()
    assert len(project.chunks()) == 3  # the copy is stored (its vectors reused), optimize removes it

    dry = project.run("optimize_chromadb.py", "--dry-run")
    assert dry.returncode == 0 and "would change" in dry.stdout
    assert all("rag_strict" not in m for _, m in project.chunks().values())

    first = project.run("optimize_chromadb.py")
    assert first.returncode == 0, first.stderr
    chunks = project.chunks()
    assert len(chunks) == 2  # the copy's chunk removed; a.txt's and b.txt's kept
    texts = [" ".join(d.lower().split()) for d, _ in chunks.values()]
    assert len(texts) == len(set(texts))
    assert all(m["rag_strict"] is True and m["source_only"] is True for _, m in chunks.values())
    stands_for = [m for _, m in chunks.values() if m.get("also_sources")]
    assert stands_for and all(m["source"].endswith("a.txt") for m in stands_for)
    assert all(m["also_sources"] == [str(project.transcripts / "copy/a-again.txt")] for m in stands_for)

    second = project.run("optimize_chromadb.py")
    assert "nothing to change" in second.stdout
    # the dropped copy still counts as done: nothing is queued or embedded again
    api.reset()
    project.run("generate_file_queue.py")
    project.ingest_all()
    assert api.stats()["requests"] == 0


def test_a_copy_of_a_stored_transcript_costs_no_tokens(project, api):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    paid = api.stats()["tokens"]
    project.add("b.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    assert api.stats()["tokens"] == paid
    assert {m["source"] for _, m in project.chunks().values()} == {str(project.transcripts / n)
                                                                   for n in ("a.txt", "b.txt")}


def test_missing_key_or_folder_is_one_line_and_leaves_the_queue_alone(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    assert project.run("generate_file_queue.py").returncode == 0
    before = (project.checkpoints / "file_queue.json").read_bytes()

    for script in ("process_queue_worker.py", "ingest_one_file.py"):
        r = project.run(script, OPENAI_API_KEY="<unset>")
        assert r.returncode == 2
        assert r.stderr.strip().count("\n") == 0 and "OPENAI_API_KEY" in r.stderr, r.stderr
        r = project.run(script, TRANSCRIPTS_DIR=str(project.root / "nowhere"))
        assert r.returncode == 2
        assert r.stderr.strip().count("\n") == 0 and "TRANSCRIPTS_DIR" in r.stderr, r.stderr
    r = project.run("generate_file_queue.py", TRANSCRIPTS_DIR=str(project.root / "nowhere"))
    assert r.returncode == 2 and "TRANSCRIPTS_DIR" in r.stderr
    assert (project.checkpoints / "file_queue.json").read_bytes() == before


def test_empty_queue_says_so_and_exits_zero(project):
    r = project.run("ingest_one_file.py")
    assert r.returncode == 0
    assert "queue is empty" in r.stdout


def test_files_per_child_stores_the_same_content(project, api):
    project.add_real()
    project.add("sample.txt", SAMPLE_TRANSCRIPT)
    project.run("generate_file_queue.py")
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="2", FILES_PER_CHILD="5")
    assert "2 files run (2 completed)" in r.stdout, r.stdout + r.stderr
    assert len(project.queue["pending"]) == 1  # MAX_ITERATIONS still counts files, not children
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", FILES_PER_CHILD="5")
    assert "1 files run (1 completed)" in r.stdout
    assert api.stats()["tokens"] == sum(m["token_count"] for _, m in project.chunks().values())


def test_max_iterations_limits_files_per_run(project):
    for n in range(3):
        project.add(f"t{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    project.run("generate_file_queue.py")
    r = project.run("process_queue_worker.py")  # MAX_ITERATIONS defaults to 1
    assert r.returncode == 0
    assert len(project.queue["completed"]) == 1 and len(project.queue["pending"]) == 2
    r = project.run("process_queue_worker.py", "--max-iterations", "0")
    assert len(project.queue["completed"]) == 3


def test_ingest_one_file_with_a_path(project):
    a = project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.run("ingest_one_file.py", str(a))
    assert r.returncode == 0, r.stderr
    assert project.queue["completed"] == [str(a)]
    outside = project.root / "outside.txt"
    outside.write_text("secret\n")
    r = project.run("ingest_one_file.py", str(outside))
    assert r.returncode == 2 and "outside TRANSCRIPTS_DIR" in r.stderr


def test_wrong_key_stops_the_run_at_once(project, api):
    for n in range(3):
        project.add(f"t{n}.txt", SAMPLE_TRANSCRIPT + f"\nextra {n}\n")
    project.run("generate_file_queue.py")
    wrong = "sk-wrong-key-0000000000000000"
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", OPENAI_API_KEY=wrong)
    assert r.returncode == 5
    assert api.stats()["status_counts"].get("401") == 1  # one file tried, then the run stopped
    q = project.queue
    assert len(q["pending"]) == 3 and q["failed"] == [] and q["processing"] == []
    assert "OPENAI_API_KEY" in r.stderr and wrong not in r.stdout + r.stderr


def test_monitoring_one_liner_reads_the_queue(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    path = project.checkpoints / "file_queue.json"
    one_liner = ("import json; q=json.load(open(%r)); "
                 "print(f\"Pending: {len(q['pending'])}, Completed: {len(q['completed'])}, "
                 "Failed: {len(q['failed'])}\")" % str(path))
    out = subprocess.run([sys.executable, "-c", one_liner], capture_output=True, text=True).stdout
    assert out.strip() == "Pending: 0, Completed: 1, Failed: 0"


def test_key_never_stored(project):
    a = project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    assert project.queue["completed"] == [str(a)]  # (nothing ingested: nothing that could hold the key)
    written = [f for folder in (project.checkpoints, project.chroma) for f in folder.rglob("*") if f.is_file()]
    names = {f.name for f in written}
    assert {"file_queue.json", "checkpoint.json", "chroma.sqlite3"} <= names, names
    for f in written:
        assert API_KEY.encode() not in f.read_bytes(), f
    chunks = project.chunks()
    assert {m["source"] for _, m in chunks.values()} == {str(a)}
    for doc, meta in chunks.values():
        assert API_KEY not in doc + json.dumps(meta)


def test_files_run_side_by_side_sharing_one_store(project, api):
    """FILE_CONCURRENCY children at once (one request each in flight here), all writing through the
    worker's one open embedded store: the same content and tokens as one file at a time."""
    for n in range(6):
        project.add(f"t{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    api.set_faults(latency_ms=300)
    one = dict(EMBED_CONCURRENCY="1", EMBED_BATCH_SIZE="1")
    r = project.ingest_all(FILE_CONCURRENCY="3", **one)
    assert "6 files run (6 completed)" in r.stdout, r.stdout + r.stderr
    assert api.stats()["max_concurrent"] >= 2  # files side by side
    side_by_side = project.content()
    tokens = api.stats()["tokens"]

    (project.root / "alone").mkdir()
    alone = type(project)(project.root / "alone", api)
    for n in range(6):
        alone.add(f"t{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    api.reset()
    api.set_faults(latency_ms=0)
    alone.ingest_all(FILE_CONCURRENCY="1", **one)
    assert api.stats()["max_concurrent"] == 1
    assert alone.content() == side_by_side and api.stats()["tokens"] == tokens


def test_an_unreachable_api_stops_the_run_before_anything_is_claimed(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", OPENAI_MAX_RETRIES="0",
                    OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be reached" in lines[0] and "nothing was claimed" in lines[0], r.stderr
    assert not (project.checkpoints / "file_queue.json").exists()


def test_stored_vectors_are_the_apis_own_numbers(project, api):
    # vectors come as base64 float32 and are kept as arrays (never Python floats); a copy reuses them
    import chromadb
    import numpy as np
    import openai
    from chromadb.api.client import SharedSystemClient

    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    project.add("b.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all()
    SharedSystemClient.clear_system_cache()
    got = chromadb.PersistentClient(path=str(project.chroma)).get_collection("transcripts").get(
        include=["documents", "embeddings"])
    SharedSystemClient.clear_system_cache()
    assert len(got["ids"]) >= 2
    asked = openai.OpenAI(api_key=API_KEY, base_url=api.base_url).embeddings.create(
        model="text-embedding-3-small", input=got["documents"], encoding_format="float")
    assert len(asked.data) == len(got["embeddings"]) == len(got["ids"])  # (zip stops at the shorter)
    for stored, item in zip(got["embeddings"], asked.data):
        assert np.array_equal(np.asarray(stored), np.asarray(item.embedding, dtype=np.float32))


def test_a_server_that_ignores_the_base64_request_still_gives_float32_vectors():
    import base64

    import numpy as np

    from ingestion.openai_api.embeddings import _vector

    v = np.array([0.25, -1.5, 3.0e-8], dtype="<f4")
    assert np.array_equal(_vector(base64.b64encode(v.tobytes()).decode()), v)
    as_list = _vector([0.25, -1.5, 3.0e-8])
    assert as_list.dtype == np.float32 and np.array_equal(as_list, v)
