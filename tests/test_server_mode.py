"""Client/server mode against a real `chroma run` server, and the diskless cron run.

On Render a cron job gets a new instance and no disk each run: the queue and the
checkpoint are gone every time, and only the Chroma server remembers. These tests
empty CHECKPOINT_DIR before every worker run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_TRANSCRIPT, Project, free_port, start_chroma
from waiting import wait_for

sys.path.insert(0, str(ROOT))
from ingestion.common.procinfo import pid_alive  # noqa: E402

CORPUS = {f"show-{n}.txt": "\n\n".join(SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}.{k}") for k in range(5))
          for n in range(5)}


def server_chunks(env) -> dict:
    import chromadb

    client = chromadb.HttpClient(host=env["CHROMA_HOST"], port=int(env["CHROMA_PORT"]))
    name = env.get("CHROMA_COLLECTION", "transcripts")
    got = client.get_collection(name, embedding_function=None).get(include=["documents", "metadatas"])
    return {i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}


def fill(project):
    for name, text in CORPUS.items():
        project.add(name, text)


def test_whole_pipeline_through_a_chroma_server(project, api, chroma_server):
    project.env.update(chroma_server)
    fill(project)
    project.ingest_all()
    assert not project.chroma.exists()  # nothing embedded on this side
    chunks = server_chunks(chroma_server)
    assert {os.path.basename(m["source"]) for _, m in chunks.values()} == set(CORPUS)
    assert api.stats()["tokens"] == sum(m["token_count"] for _, m in chunks.values())
    assert "nothing to change" not in project.run("optimize_chromadb.py").stdout
    assert "nothing to change" in project.run("optimize_chromadb.py").stdout
    r = project.run("query_chromadb.py", "dredging harbour 3.2", "-k", "1")
    assert r.returncode == 0 and "show-3.txt" in r.stdout, r.stdout + r.stderr
    status = project.run("process_queue_worker.py", "--status")
    assert f"store: {len(server_chunks(chroma_server))} chunks, 5 files" in status.stdout


def test_diskless_cron_runs_finish_the_corpus_without_paying_twice(project, api, chroma_server, tmp_path):
    project.env.update(chroma_server)
    fill(project)
    runs = 0
    while True:
        shutil.rmtree(project.checkpoints, ignore_errors=True)  # a new instance, no disk
        api.set_faults(latency_ms=15)
        worker = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "ingestion" /
                                                      "process_queue_worker.py")],
                                  env={**project.env, "MAX_ITERATIONS": "2", "EMBED_BATCH_SIZE": "2"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if runs == 1:  # one run is killed mid-file, as on a deploy
            child = wait_for(lambda: child_at_work(project), 60, "a child ingesting a file")
            worker.kill()
            worker.wait()
            # its orphaned child finishes (or not) on its own, before the next instance starts
            wait_for(lambda: not pid_alive(child), 60, f"the orphaned child {child} to end")
            out = ""
        else:
            out, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, out + err
        runs += 1
        if "0 files run" in out:
            break
        assert runs < 12
    api.set_faults(latency_ms=0)
    chunks = server_chunks(chroma_server)
    assert {os.path.basename(m["source"]) for _, m in chunks.values()} == set(CORPUS)
    stored = sum(m["token_count"] for _, m in chunks.values())
    assert stored <= api.stats()["tokens"] <= stored * 1.02
    # one clean embedded run stores the same content
    (tmp_path / "clean").mkdir()
    clean = Project(tmp_path / "clean", None)
    clean.env["OPENAI_BASE_URL"] = api.base_url
    fill(clean)
    clean.ingest_all()
    strip = lambda cs: sorted((d, os.path.basename(m["source"]), m["chunk_index"]) for d, m in cs.values())  # noqa
    assert strip(chunks) == strip(clean.chunks())
    # after completion a fresh run sends nothing
    api.reset()
    shutil.rmtree(project.checkpoints, ignore_errors=True)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0 and "5 already in the store" in r.stdout, r.stdout
    assert api.stats()["requests"] == 0


def child_at_work(project) -> int | None:
    """The pid of a child holding a file in processing, if any (the queue as the worker wrote it)."""
    try:
        q = project.queue
    except (OSError, ValueError):
        return None
    leases = [(q["files"][p].get("lease") or {}) for p in q["processing"]]
    return next((lease["child_pid"] for lease in leases if lease.get("child_pid")), None)


def test_a_file_held_by_another_worker_is_left_alone(project, api, chroma_server):
    """Two machines share one Chroma server: a file leased by one is skipped by the other."""
    project.env.update(chroma_server)
    fill(project)
    held = str(project.transcripts / "show-0.txt")
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from ingestion.common import settings
    from ingestion.storage.store import Store

    os.environ.update(chroma_server)
    try:
        with Store(settings.load()) as store:
            assert store.claim(held, "other-machine:123", 600) is None
            r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
            assert r.returncode == 0, r.stderr
            assert "being ingested by other-machine:123" in r.stderr
            q = project.queue
            assert q["pending"] == [held] and len(q["completed"]) == 4
            store.unclaim(held, "other-machine:123")
    finally:
        for k in chroma_server:
            os.environ.pop(k, None)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert len(project.queue["completed"]) == 5


def test_shards_split_the_corpus(project, api, chroma_server):
    project.env.update(chroma_server)
    for n in range(8):
        project.add(f"f{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    done = set()
    for i in range(2):
        shutil.rmtree(project.checkpoints, ignore_errors=True)  # each machine its own queue
        r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", WORKER_SHARD=f"{i}/2")
        assert r.returncode == 0, r.stderr
        mine = set(project.queue["completed"])
        assert mine and not mine & done
        done |= mine
    assert len(done) == 8
    assert api.stats()["tokens"] == sum(m["token_count"] for _, m in server_chunks(chroma_server).values())
    r = project.run("process_queue_worker.py", WORKER_SHARD="2/2")
    assert r.returncode == 2 and "WORKER_SHARD" in r.stderr


def test_chroma_cloud_without_network_is_one_clear_line(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.run("process_queue_worker.py", CHROMA_API_KEY="ck-fake", CHROMA_TENANT="t", CHROMA_DATABASE="d")
    assert r.returncode == 2, r.stderr
    assert "Chroma Cloud" in r.stderr and r.stderr.strip().count("\n") == 0


def test_a_server_down_before_the_run_is_one_line_and_charges_nothing(project, api):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.run("generate_file_queue.py")
    before = project.queue
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", CHROMA_HOST="127.0.0.1", CHROMA_PORT=str(free_port()))
    assert r.returncode == 2 and "cannot reach the Chroma server" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert api.stats()["requests"] == 0
    after = project.queue
    assert after["pending"] == before["pending"] and after["failed"] == []


def test_a_server_lost_mid_run_releases_the_file_and_stops_the_run(project, api, tmp_path):
    proc, env = start_chroma(tmp_path / "server-data")
    try:
        project.env.update(env)
        fill(project)
        project.run("generate_file_queue.py")
        api.set_faults(latency_ms=300)
        worker = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "ingestion" /
                                                      "process_queue_worker.py")],
                                  env={**project.env, "MAX_ITERATIONS": "0", "EMBED_BATCH_SIZE": "1",
                                       "EMBED_CONCURRENCY": "1", "CHROMA_TIMEOUT": "10"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not project.queue["completed"] and time.time() < deadline:
            time.sleep(0.2)
        assert project.queue["completed"], "no file finished before the server went away"
        # the next requests are answered 3 s late, and the server goes while one of them is in flight
        api.set_faults(fail_next=[{"action": "hang", "seconds": 3} for _ in range(8)])
        wait_for(lambda: len(api.faults()["fail_next"]) < 8 and api.stats()["in_flight"] >= 1, 60,
                 "a late answer in flight")
        proc.kill()  # the server is redeployed, crashes, or its machine goes
        proc.wait()
        out, err = worker.communicate(timeout=180)
    finally:
        proc.kill()
        api.set_faults(latency_ms=0)
    assert worker.returncode == 2, out + err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    q = project.queue
    assert q["failed"] == [] and q["processing"] == [], q
    assert q["pending"] and all(q["files"][p].get("attempts", 0) == 0 for p in q["pending"])
    # the answer in flight when the server went was paid: kept on disk, written when it is back
    assert list((project.checkpoints / "unwritten").glob("*.json")), err
    proc, env = start_chroma(tmp_path / "server-data", port=int(env["CHROMA_PORT"]))
    try:
        r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
        stored = sum(m["token_count"] for _, m in server_chunks(env).values())
    finally:
        proc.kill()
    assert r.returncode == 0, r.stdout + r.stderr
    assert api.stats()["tokens"] == stored  # not one chunk paid twice
    assert "paid for in an earlier run" in r.stderr, r.stderr
    assert not list((project.checkpoints / "unwritten").glob("*.json"))
    assert project.queue["completed"] and not project.queue["pending"]


def test_two_shard_workers_start_at_once_on_a_fresh_server(project, api, chroma_server):
    """The server may answer the first reads of a fresh collection with an internal error
    ("Nothing found on disk"): retried, never charged to a file."""
    project.env.update(chroma_server)
    for n in range(8):
        project.add(f"f{n}.txt", SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}"))
    workers = []
    for i in range(2):
        ck = project.root / f"ck{i}"
        workers.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).parent.parent / "ingestion" / "process_queue_worker.py")],
            env={**project.env, "MAX_ITERATIONS": "0", "WORKER_SHARD": f"{i}/2", "CHECKPOINT_DIR": str(ck)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, out + err
    done = []
    for i in range(2):
        q = json.loads((project.root / f"ck{i}" / "file_queue.json").read_text())
        assert q["failed"] == [] and q["pending"] == []
        done += q["completed"]
    assert len(done) == 8
