"""Trusting the store: a collection knows how it was made, store and state faults stop the run
(never fail a file), one path is one file, deleted transcripts can be pruned.

Every case runs the scripts as a user does and checks: exit code, one line without a
traceback, the queue lists (unchanged, or files released, never failed), tokens spent
(0 where refused), and the store before and after.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import SAMPLE_TRANSCRIPT

SCRIPTS_THAT_WRITE = [("generate_file_queue.py",), ("process_queue_worker.py",), ("ingest_one_file.py",),
                      ("optimize_chromadb.py",)]


def one_line_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def two_files(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.add("sub/b.txt", SAMPLE_TRANSCRIPT.replace("harbour", "airport"))


def foreign_collection(project, dims: int, space: str | None, ids=None, name="transcripts", count=40):
    """A collection made by another tool (the old sentence-transformers pipeline, say)."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    client = chromadb.PersistentClient(path=str(project.chroma))
    try:
        meta = {"hnsw:space": space} if space else None
        col = client.get_or_create_collection(name, metadata=meta, embedding_function=None)
        ids = ids or [f"doc-{i}" for i in range(count)]
        col.add(ids=ids, embeddings=[[float((i + j) % 7) + 1.0 for j in range(dims)] for i in range(len(ids))],
                documents=[f"old text {i}" for i in range(len(ids))])
    finally:
        SharedSystemClient.clear_system_cache()


def store_state(project) -> dict:
    """Every collection with its count and metadata."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    if not project.chroma.exists():
        return {}
    client = chromadb.PersistentClient(path=str(project.chroma))
    try:
        return {c.name: (c.count(), c.metadata) for c in client.list_collections()}
    finally:
        SharedSystemClient.clear_system_cache()


@pytest.mark.parametrize("dims,space,ids", [(384, None, None), (1536, None, None), (1536, "cosine", None),
                                            (384, "cosine", ["0123456789abcdef-" + "0" * 32])])
def test_a_collection_made_elsewhere_is_refused_before_anything_is_claimed_or_paid(project, api, dims, space, ids):
    two_files(project)
    foreign_collection(project, dims, space, ids)
    before = store_state(project)
    for script in ("generate_file_queue.py", "process_queue_worker.py", "ingest_one_file.py"):
        line = one_line_error(project.run(script, MAX_ITERATIONS="0"))
        assert "made elsewhere" in line and "CHROMA_COLLECTION" in line, line
        assert f"{dims} dimensions" in line and f"{space or 'l2'} space" in line, line
    assert not (project.checkpoints / "file_queue.json").exists()
    assert api.stats()["requests"] == 0
    assert store_state(project) == before  # nothing created beside it, nothing changed in it


def test_migrating_to_a_new_collection_leaves_the_old_one_alone(project, api):
    two_files(project)
    foreign_collection(project, 384, None)
    before = store_state(project)
    project.ingest_all(CHROMA_COLLECTION="transcripts_v2")
    after = store_state(project)
    assert after["transcripts"] == before["transcripts"]
    assert after["transcripts_v2"][0] > 0
    record = after["transcripts_v2"][1]
    assert record["made_by"] == "transcript-ingestion" and record["embedding_dimensions"] == 1536
    assert record["chunk_max_tokens"] == 500 and record["chunk_overlap_tokens"] == 50
    assert record["distance"] == "cosine" and record["tokenizer"] == "cl100k_base"
    assert {"chunker_version", "text_cleanup", "cleanup_version", "embedding_model"} <= set(record)
    q = project.run("query_chromadb.py", "dredging", "-k", "1", CHROMA_COLLECTION="transcripts_v2")
    assert q.returncode == 0 and "cosine distance" in q.stdout, q.stderr


@pytest.mark.parametrize("change,value,words", [("CHUNK_MAX_TOKENS", "200", "CHUNK_MAX_TOKENS 500 (this run: 200)"),
                                                ("CHUNK_OVERLAP_TOKENS", "10", "CHUNK_OVERLAP_TOKENS 50"),
                                                ("TEXT_CLEANUP", "off", "TEXT_CLEANUP 'auto'"),
                                                ("EMBEDDING_DIMENSIONS", "512", "EMBEDDING_DIMENSIONS 1536")])
def test_changed_settings_are_refused_with_what_differs(project, api, change, value, words):
    two_files(project)
    project.ingest_all()
    queue_before = project.queue
    before = project.content()
    project.add("c.txt", SAMPLE_TRANSCRIPT.replace("harbour", "bridge"))
    api.reset()
    for script in ("generate_file_queue.py", "process_queue_worker.py", "ingest_one_file.py"):
        line = one_line_error(project.run(script, MAX_ITERATIONS="0", **{change: value}))
        assert words in line and "CHROMA_COLLECTION" in line, line
    assert project.queue == queue_before
    assert api.stats()["requests"] == 0
    assert project.content() == before


def test_a_mistyped_model_leaves_nothing_behind(project, api):
    two_files(project)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", EMBEDDING_MODEL="text-embedding-3-smal")
    line = one_line_error(r)
    assert "text-embedding-3-smal" in line and "EMBEDDING_MODEL" in line
    assert api.stats()["requests"] == 0 and api.stats()["status_counts"] == {"404": 1}  # asked, not paid
    assert not (project.checkpoints / "file_queue.json").exists()  # stopped before the queue was built
    assert "transcripts" not in store_state(project)  # nor a collection made
    project.add("c.txt", SAMPLE_TRANSCRIPT.replace("harbour", "bridge"))
    project.run("generate_file_queue.py")
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", EMBEDDING_MODEL="text-embedding-3-smal")
    assert "text-embedding-3-smal" in one_line_error(r)
    q = project.queue
    assert q["failed"] == [] and q["processing"] == [] and len(q["pending"]) == 3
    assert all(q["files"][p].get("attempts", 0) == 0 for p in q["pending"])
    project.ingest_all()  # the right model: no deleting by hand
    assert len(project.queue["completed"]) == 3


def test_a_collection_of_an_earlier_version_of_this_project_is_adopted(project, api):
    two_files(project)
    project.ingest_all()
    import chromadb
    from chromadb.api.client import SharedSystemClient

    client = chromadb.PersistentClient(path=str(project.chroma))
    client.get_collection("transcripts").modify(metadata={"embedding_model": "text-embedding-3-small",
                                                          "embedding_dimensions": 1536})
    SharedSystemClient.clear_system_cache()
    project.add("c.txt", SAMPLE_TRANSCRIPT.replace("harbour", "bridge"))
    project.ingest_all()
    assert len(project.queue["completed"]) == 3


@pytest.mark.parametrize("how", ["a regular file", "not writable"])
def test_a_store_that_cannot_be_opened_stops_every_script_with_one_line(project, api, how):
    two_files(project)
    project.run("generate_file_queue.py", CHROMA_PATH=str(project.root / "elsewhere"))
    queue_before = project.queue
    if how == "a regular file":
        project.chroma.write_text("not a folder")
        env = {}
    else:  # a folder under a file: cannot be created, whoever we are
        env = {"CHROMA_PATH": str(project.root / "afile" / "db")}
        (project.root / "afile").write_text("x")
    for script, *args in [("generate_file_queue.py",), ("process_queue_worker.py",), ("ingest_one_file.py",),
                          ("optimize_chromadb.py",), ("query_chromadb.py", "a question")]:
        line = one_line_error(project.run(script, *args, MAX_ITERATIONS="0", **env))
        assert "CHROMA_PATH" in line, line
    q = project.queue
    q.pop("store", None), queue_before.pop("store", None)
    assert q == queue_before
    assert api.stats()["requests"] == 0


@pytest.mark.parametrize("size,files", [("2m", 2), ("40m", 14)])
def test_a_full_disk_under_the_store_releases_the_file_and_stops_the_run(project, api, tmp_path, size, files):
    """2m: full before the run (refused at the start); 40m: fills up during the run."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        big = "\n\n".join(SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {i}") for i in range(300))
        for n in range(files):
            project.add(f"big{n:02d}.txt", big.replace("Alice", f"Alice{n}"))
        # one file at a time: with files side by side the 40m disk may fill before any file completes
        env = {"CHROMA_PATH": str(disk / "db"), "CHROMA_TIMEOUT": "20", "FILES_PER_CHILD": "1",
               "FILE_CONCURRENCY": "1"}
        if size == "40m":  # a disk that fills during the run, as another process's files would fill it: the
            env["CAPACITY_CHECK"] = "warn"  # capacity plan, which would refuse the queue first, says so and goes on
        project.run("generate_file_queue.py", CHROMA_PATH=str(tmp_path / "elsewhere"))
        r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", **env)
        line = one_line_error(r)
        assert "CHROMA_PATH" in line and ("full" in line or "disk" in line), line
        q = project.queue
        assert q["failed"] == [] and q["processing"] == [], q
        assert len(q["pending"]) + len(q["completed"]) == files and q["pending"]
        assert all(q["files"][p].get("attempts", 0) == 0 for p in q["pending"])
        if size == "40m":
            assert q["completed"], "the disk should fill up during the run, not before"
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_state_folder_that_is_a_file_is_one_line(project, api):
    two_files(project)
    bad = project.root / "ck-file"
    bad.write_text("x")
    for script, *args in [("generate_file_queue.py",), ("process_queue_worker.py",), ("ingest_one_file.py",),
                          ("process_queue_worker.py", "--status"), ("auto_chunker.py", str(project.transcripts / "a.txt"))]:
        line = one_line_error(project.run(script, *args, CHECKPOINT_DIR=str(bad)))
        assert "ck-file" in line, line
    assert api.stats()["requests"] == 0


def test_one_file_two_spellings_is_one_file(project, api):
    two_files(project)
    project.ingest_all()
    api.reset()
    done_before = project.checkpoint["processed_files"]
    for spelling in ("sub/../a.txt", "./a.txt", "sub/./b.txt"):
        r = project.run("ingest_one_file.py", str(project.transcripts) + "/" + spelling)
        assert r.returncode == 0, r.stderr
    q = project.queue
    assert sorted(q["completed"]) == sorted({str(project.transcripts / "a.txt"), str(project.transcripts / "sub/b.txt")})
    assert api.stats()["tokens"] == 0
    assert set(project.checkpoint["processed_files"]) == set(done_before)
    assert {m["source"] for _, m in project.chunks().values()} == set(done_before)


def test_a_symlinked_folder_is_resolved_to_its_place(project, api):
    two_files(project)
    (project.transcripts / "alias").symlink_to(project.transcripts / "sub")
    project.ingest_all()
    api.reset()
    r = project.run("ingest_one_file.py", str(project.transcripts / "alias" / "b.txt"))
    assert r.returncode == 0, r.stderr
    assert api.stats()["tokens"] == 0
    assert project.queue["completed"].count(str(project.transcripts / "sub" / "b.txt")) == 1
    assert len(project.queue["completed"]) == 2


def test_a_hand_edited_queue_with_odd_spellings_still_runs(project, api):
    two_files(project)
    project.run("generate_file_queue.py")
    q = project.queue
    a = str(project.transcripts / "a.txt")
    q["pending"] = [str(project.transcripts / "sub" / ".." / "a.txt"), str(project.transcripts / "./sub/b.txt"), a]
    (project.checkpoints / "file_queue.json").write_text(json.dumps(q))
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    q = project.queue
    assert sorted(q["completed"]) == sorted([a, str(project.transcripts / "sub" / "b.txt")])
    assert q["pending"] == q["failed"] == []


def test_ingest_one_file_builds_the_queue_when_there_is_none(project, api):
    two_files(project)
    r = project.run("ingest_one_file.py")
    assert r.returncode == 0, r.stderr
    q = project.queue
    assert len(q["completed"]) == 1 and len(q["pending"]) == 1
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert "1 files run (1 completed)" in r.stdout, r.stdout
    assert len(project.queue["completed"]) == 2


def test_the_queue_follows_the_collection(project, api):
    two_files(project)
    project.ingest_all()
    old = store_state(project)["transcripts"]
    api.reset()
    project.ingest_all(CHROMA_COLLECTION="transcripts_v2")
    q = project.queue
    assert len(q["completed"]) == 2 and q["store"]["collection"] == "transcripts_v2"
    assert api.stats()["tokens"] > 0  # the new collection was filled, not taken as done
    assert store_state(project)["transcripts"] == old
    assert list(project.checkpoints.glob("file_queue.transcripts.*.json"))
    api.reset()
    project.ingest_all()  # back to the first: rebuilt from its own record, nothing paid
    assert api.stats()["requests"] == 0 and len(project.queue["completed"]) == 2


def test_status_with_completions_in_the_same_second(project, api):
    for n in range(4):
        project.add(f"f{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    project.ingest_all(FILES_PER_CHILD="4")
    ck = project.checkpoint
    for d in ck["processed_files"].values():
        d["timestamp"] = "2026-01-01T00:00:00+0000"
    (project.checkpoints / "checkpoint.json").write_text(json.dumps(ck))
    r = project.run("process_queue_worker.py", "--status")
    assert r.returncode == 0 and "queue: pending 0" in r.stdout, r.stderr


def test_query_says_what_is_wrong(project, api):
    r = project.run("query_chromadb.py", "anything")
    assert r.returncode == 0 and "the store is empty: run the worker first" in r.stdout, r.stderr
    two_files(project)
    project.ingest_all()
    api.reset()
    line = one_line_error(project.run("query_chromadb.py", "dredging", "-k", "0"))
    assert "-k must be at least 1" in line, line  # said before the question is embedded or the store asked
    assert api.stats()["requests"] == 0
    r = project.run("query_chromadb.py", "dredging", "-k", "1")
    assert r.returncode == 0 and "cosine distance" in r.stdout


def test_query_names_the_real_distance_of_an_l2_collection(project, api):
    foreign_collection(project, 1536, None, count=3)
    r = project.run("query_chromadb.py", "anything", "-k", "1")
    assert r.returncode == 0, r.stderr
    assert "squared L2 distance" in r.stdout


def test_prune_removes_what_deleted_transcripts_left(project, api):
    two_files(project)
    project.add("copy.txt", SAMPLE_TRANSCRIPT)  # a duplicate of a.txt: optimize keeps one survivor
    project.ingest_all()
    project.run("optimize_chromadb.py")
    (project.transcripts / "a.txt").unlink()
    (project.transcripts / "sub" / "b.txt").unlink()
    before = project.chunks()
    dry = project.run("generate_file_queue.py", "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and "a.txt" in dry.stdout and "b.txt" in dry.stdout
    assert project.chunks() == before
    r = project.run("generate_file_queue.py", "--prune")
    assert r.returncode == 0, r.stderr
    chunks = project.chunks()
    gone = {str(project.transcripts / "a.txt"), str(project.transcripts / "sub" / "b.txt")}
    assert chunks, "the copy's text must stay"
    for _, m in chunks.values():
        assert m["source"] not in gone and not gone & set(m.get("also_sources") or [])
    assert {m["source"] for _, m in chunks.values()} == {str(project.transcripts / "copy.txt")}
    q, ck = project.queue, project.checkpoint
    assert not gone & set(q["completed"] + q["pending"] + q["failed"]) and not gone & set(q["files"])
    assert not gone & set(ck["processed_files"])
    api.reset()
    project.run("generate_file_queue.py")
    assert project.run("process_queue_worker.py", MAX_ITERATIONS="0").returncode == 0
    assert api.stats()["requests"] == 0


def test_prune_refuses_to_empty_the_store_when_every_file_is_gone(project, api):
    two_files(project)
    project.ingest_all()
    shutil.rmtree(project.transcripts)
    project.transcripts.mkdir()  # an unmounted or emptied folder
    before = project.chunks()
    line = one_line_error(project.run("generate_file_queue.py", "--prune"))
    assert "--force" in line
    assert project.chunks() == before
    r = project.run("generate_file_queue.py", "--prune", "--force")
    assert r.returncode == 0 and project.chunks() == {}


def test_no_tokenizer_file_is_one_line_before_anything_is_claimed(project, api, tmp_path):
    # offline and no cached cl100k_base: the worker (whose fork server checks it) and ingest_one_file.py
    # stop in one line before a file is claimed; building the queue needs no tokenizer
    two_files(project)
    no_net = "http://127.0.0.1:9"  # tiktoken's download fails at once, with or without a network here
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"), "HTTPS_PROXY": no_net, "https_proxy": no_net}
    assert project.run("generate_file_queue.py", **env).returncode == 0
    for script, *args in [("process_queue_worker.py",), ("ingest_one_file.py", str(project.transcripts / "a.txt"))]:
        line = one_line_error(project.run(script, *args, **env))
        assert "TIKTOKEN_CACHE_DIR" in line, line
    q = project.queue
    assert q["processing"] == q["completed"] == q["failed"] == [] and len(q["pending"]) == 2, q
    assert all(q["files"][p].get("attempts", 0) == 0 for p in q["pending"])
    assert api.stats()["tokens"] == 0


def test_a_store_that_fails_after_its_check_gives_the_claimed_file_back(project, api, monkeypatch):
    """ingest_one_file.py checks the store, claims, then opens it: a failure in between (the disk
    filling up, the server going away) must not leave the claim in `processing`."""
    from ingestion.common import settings
    from ingestion.common.errors import StoreError
    from ingestion.run import job
    from ingestion.storage import store

    class FailsToOpen(store.Store):
        def __enter__(self):
            raise StoreError("the store went away")

    two_files(project)
    for name, value in project.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(job, "Store", FailsToOpen)  # check_store (before the claim) opens the real one
    with pytest.raises(StoreError):
        job.ingest_path(settings.load(), None, job.StopFlag())
    q = project.queue
    assert q["processing"] == [] and q["failed"] == [] and len(q["pending"]) == 2, q
    assert all(q["files"][p].get("attempts", 0) == 0 for p in q["pending"])
    assert api.stats()["tokens"] == 0
