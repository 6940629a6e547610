"""Kills, OOM kills, SIGTERM and overlapping workers: the store ends as after one clean run.

Real signals to real processes. After each event the worker is run until the queue
is empty; then the stored content (ids, documents, metadata but timestamps) must
equal a clean run's, nothing may sit in pending or processing, and the tokens
sent may exceed a clean run's by at most 10%.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE_TRANSCRIPT, Project
from waiting import wait_for

from ingestion.common.procinfo import pid_alive

CORPUS = {f"day{n}/session-{n}.txt": "\n\n".join(
    f"[00:{m:02d}:00] SPEAKER{m % 3}: " + SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}-{m}")
    for m in range(20)) for n in range(6)}
# one chunk a request, one request in flight a file: a child's kill loses at most one paid chunk, so the
# 10% bound on tokens holds on this small corpus as it does on a real one
SLOW = {"EMBED_BATCH_SIZE": "1", "EMBED_CONCURRENCY": "1"}


def fill(project: Project) -> None:
    for name, text in CORPUS.items():
        project.add(name, text)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, api_server):
    """Content and tokens of one clean run of CORPUS."""
    project = Project(tmp_path_factory.mktemp("clean"), api_server)
    fill(project)
    api_server.reset()
    project.ingest_all(**SLOW)
    tokens = api_server.stats()["tokens"]
    api_server.reset()
    return project.content(), tokens


def start_worker(project: Project, **env) -> subprocess.Popen:
    full = {**project.env, "MAX_ITERATIONS": "0", **SLOW, **env}
    return subprocess.Popen([sys.executable, str(ROOT / "ingestion" / "process_queue_worker.py")], env=full,
                            cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _holder(project: Project, skip=()) -> tuple[str, int] | None:
    """(path, pid) of a live ingest child holding a file in processing (not one of skip), if any."""
    try:
        q = project.queue
    except (OSError, ValueError):  # no queue yet
        return None
    for path in q["processing"]:
        pid = (q["files"].get(path, {}).get("lease") or {}).get("child_pid")
        if pid and path not in skip and pid_alive(pid):
            return path, pid
    return None


def child_pid(project: Project, worker: subprocess.Popen, timeout: float = 60) -> int:
    """The pid of a live ingest child of worker holding a file, once there is one (the test fails if none
    comes, at once with the worker's output if it ended)."""
    found = wait_for(lambda: _holder(project) or worker.poll() is not None, timeout, "an ingest child holding a file")
    if found is True:
        out, err = worker.communicate()
        raise AssertionError(f"the worker ended (exit {worker.returncode}) before a child held a file:\n{out}{err}")
    return found[1]


def answered(api) -> int:
    """Embeddings requests the API has answered so far."""
    return api.stats()["ok_requests"]


def wait_for_orphans(project: Project, timeout: float = 60) -> None:
    """After the worker is killed its children finish on their own (they release their files): wait for
    them, or fail the test (the next run must not start beside them)."""
    def gone() -> bool:
        try:
            q = project.queue
        except FileNotFoundError:  # killed before it wrote a queue
            return True
        return not any(pid_alive((q["files"][p].get("lease") or {}).get("child_pid")) for p in q["processing"])

    wait_for(gone, timeout, "the killed worker's children to release their files")


def finish_and_compare(project: Project, clean, api) -> None:
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", **SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    q = project.queue
    assert q["pending"] == [] and q["processing"] == [] and q["failed"] == [], q
    content, clean_tokens = clean
    assert project.content() == content
    assert api.stats()["tokens"] <= clean_tokens * 1.10


@pytest.mark.parametrize("seed,files_per_child", [(0, 1), (1, 1), (2, 3)])
def test_kill_9_of_the_child_at_random_moments(project, api, clean, seed, files_per_child):
    """kill -9 of ingest children at random moments of one run: each victim a child that has just claimed a
    file, killed once the API has answered k more requests (k random, at most 2: a file takes 8, so the
    victim is mid-file and the kill lands on it). The worker goes on and finishes the queue itself.
    One child a file: two kills, of different files (a file's second kill splits it, which a clean run
    does not). Three files a child: one kill (its next child may take a killed file back)."""
    rnd = random.Random(seed)
    fill(project)
    project.run("generate_file_queue.py")
    api.set_faults(latency_ms=300)  # ~2.4 s a file
    worker = start_worker(project, FILES_PER_CHILD=str(files_per_child))
    victims, seen = [], set()
    for _ in range(2 if files_per_child == 1 else 1):
        # a file claimed since the last kill (its child's answers since then are at most k)
        path, pid = wait_for(lambda: _holder(project, skip=seen), 60, "a child claiming a file not seen before")
        base, k = answered(api), rnd.randint(0, 2)
        wait_for(lambda: answered(api) >= base + k, 60, f"{k} more answers")
        q = project.queue
        held = [p for p in q["processing"] if (q["files"][p].get("lease") or {}).get("child_pid") == pid]
        assert path in held, f"{path} was done after {k} answers: the victim was not mid-file"
        os.kill(pid, signal.SIGKILL)
        victims += held
        seen |= set(q["processing"]) | set(held)
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, out + err
    for path in victims:  # each kill landed while its child held the file
        assert f"{path}: its process was killed (SIGKILL); requeued" in err, path + "\n" + err[-3000:]
    api.set_faults(latency_ms=0)
    finish_and_compare(project, clean, api)


@pytest.mark.parametrize("seed", range(2))
def test_kill_9_of_the_worker_at_random_moments(project, api, clean, seed):
    """Three runs, each killed with kill -9 at a random moment of its ingesting: once a child holds a file
    and the API has answered k more requests (k random). Moments are counted in answers, not seconds, so
    every kill lands mid-run however fast or loaded the machine is (a random sleep landed in the worker's
    start-up on a loaded machine and after the run's end on an idle one).
    One file is stored first, by a run left alone: the collection's record is then written, and no random
    kill can land between its first write and that record (that moment has a test of its own, below)."""
    rnd = random.Random(100 + seed)
    fill(project)
    first = project.run("process_queue_worker.py", MAX_ITERATIONS="1", FILE_CONCURRENCY="1", **SLOW)
    assert first.returncode == 0 and len(project.queue["completed"]) == 1, first.stderr
    api.set_faults(latency_ms=100)
    for _ in range(3):
        worker = start_worker(project)
        child_pid(project, worker)
        k = rnd.randint(0, 6)  # (40 requests left, 8 a file: each run leaves files for the next)
        base = answered(api)
        wait_for(lambda: answered(api) >= base + k or worker.poll() is not None, 60, f"{k} more answers")
        worker.send_signal(signal.SIGKILL)
        err = worker.communicate(timeout=60)[1]  # (to its end: the orphaned children write to it too)
        assert worker.returncode == -signal.SIGKILL, "the run ended before the kill: " + err[-2000:]
        wait_for_orphans(project)
    api.set_faults(latency_ms=0)
    finish_and_compare(project, clean, api)


DIES_AT_THE_COLLECTIONS_RECORD = """
import os, runpy, signal, sys
root = sys.argv[1]
sys.path.insert(0, root)
from ingestion.storage import store
# killed at the moment the collection's record is to be written: its first vectors are stored, the record not
store.Store.stamp = lambda self, dimensions: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = [os.path.join(root, "ingestion", "process_queue_worker.py")]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_between_the_first_write_and_the_collections_record_leaves_a_usable_store(project, api, clean):
    """The record comes before a new collection's first vectors (Store.add): a worker killed at that moment
    leaves an empty collection with the right record, which the next run uses."""
    fill(project)
    worker = subprocess.Popen([sys.executable, "-c", DIES_AT_THE_COLLECTIONS_RECORD, str(ROOT)],
                              env={**project.env, "MAX_ITERATIONS": "0", **SLOW}, cwd=project.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = worker.communicate(timeout=120)[1]
    assert worker.returncode == -signal.SIGKILL, err[-2000:]
    wait_for_orphans(project)
    finish_and_compare(project, clean, api)


def test_a_store_whose_first_vectors_came_without_their_record_is_taken_back(project, api):
    """Before the record came first, a kill between a new collection's first vectors and its record left
    vectors with no record: ours by their ids, space and size. Such a store is used (and recorded), not
    refused as made elsewhere."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.ingest_all(CHROMA_COLLECTION="whole")
    SharedSystemClient.clear_system_cache()
    client = chromadb.PersistentClient(path=str(project.chroma))
    got = client.get_collection("whole", embedding_function=None).get(include=["embeddings", "documents", "metadatas"])
    broken = client.create_collection("broken", metadata={"hnsw:space": "cosine"}, embedding_function=None)
    broken.add(ids=got["ids"], embeddings=got["embeddings"], documents=got["documents"], metadatas=got["metadatas"])
    del client, broken
    SharedSystemClient.clear_system_cache()
    project.add("b.txt", SAMPLE_TRANSCRIPT.replace("harbour", "airport"))
    r = project.ingest_all(CHROMA_COLLECTION="broken")  # (its queue is rebuilt for this collection: a.txt is found stored)
    assert "2 completed" in r.stdout and "0 embedded (0 requests, 1 reused" in r.stderr, r.stdout + r.stderr
    assert project.chunks("broken")  # and recorded: a later run checks its settings as any other's
    bad = project.run("process_queue_worker.py", CHROMA_COLLECTION="broken", CHUNK_MAX_TOKENS="200")
    assert bad.returncode == 2 and "CHUNK_MAX_TOKENS" in bad.stderr, bad.stderr


def test_answers_that_reach_children_after_the_worker_is_killed_are_not_paid_again(project, api, clean):
    """The worker holds the store; a kill -9 of it leaves its children with paid answers and nowhere to
    write them. They keep them on disk (checkpoints/unwritten) and the next run writes them first."""
    fill(project)
    # one file stored first, by a run left alone: the kill cannot land between the collection's first write
    # and its record (a moment with a test of its own)
    first = project.run("process_queue_worker.py", MAX_ITERATIONS="1", FILE_CONCURRENCY="1", **SLOW)
    assert first.returncode == 0 and len(project.queue["completed"]) == 1, first.stderr
    api.set_faults(latency_ms=1500)  # every child has a request in flight when the worker dies
    worker = start_worker(project)
    child_pid(project, worker)
    wait_for(lambda: api.stats()["in_flight"] >= 2, 60, "children side by side with a request in flight each")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for_orphans(project)
    err = worker.communicate(timeout=60)[1]  # (to its end: the children write to the worker's stderr)
    assert "Traceback" not in err, err[-3000:]
    kept = list((project.checkpoints / "unwritten").glob("*.json"))
    assert kept, "no paid vector was kept: the kill hit no request in flight"
    status = project.run("process_queue_worker.py", "--status")
    assert f"unwritten: {len(kept)} file(s) of paid vectors" in status.stdout, status.stdout + status.stderr
    api.set_faults(latency_ms=0)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", **SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "paid for in an earlier run" in r.stderr, r.stderr[-2000:]
    assert not list((project.checkpoints / "unwritten").glob("*.json"))
    content, clean_tokens = clean
    assert project.content() == content
    assert api.stats()["tokens"] == clean_tokens  # not one chunk paid twice


def test_oom_kill_splits_the_file_and_finishes_it(project, api):
    big = project.add("big.txt", "\n\n".join(CORPUS.values()))
    project.run("generate_file_queue.py")
    api.set_faults(latency_ms=30)
    for kill in range(2):  # the OOM killer strikes the same file twice
        worker = start_worker(project, MAX_ITERATIONS="1", SPLIT_MIN_BYTES="1000")
        pid = child_pid(project, worker)
        base = answered(api)
        wait_for(lambda: answered(api) > base, 60, "the child's first answer")  # mid-file (~40 requests)
        os.kill(pid, signal.SIGKILL)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert ("requeued" if kill == 0 else "split") in out
    q = project.queue
    assert [os.path.basename(p) for p in q["pending"]] == [f"big_0{i}.txt" for i in range(1, 5)]
    assert all(p.startswith(str(project.checkpoints / "splits")) for p in q["pending"])
    api.set_faults(latency_ms=0)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    q = project.queue
    assert q["completed"] == [str(big)] and q["pending"] == q["failed"] == q["processing"] == []
    chunks = project.chunks()
    assert chunks and {m["source"] for _, m in chunks.values()} == {str(big)}
    assert not list((project.checkpoints / "splits").rglob("*.txt"))  # parts cleaned up
    assert project.checkpoint["processed_files"][str(big)]["split_into"] == 4
    # every part of the text is stored: each speaker turn's words are found in some chunk
    stored = " ".join(d for d, _ in chunks.values())
    for n in range(6):
        assert f"harbour {n}-5" in stored


def test_memory_limit_splits_down_to_the_floor_then_fails_with_a_reason(project, api):
    big = project.add("big.txt", "\n\n".join(CORPUS.values()))
    project.run("generate_file_queue.py")
    # a limit below what Python itself needs: every attempt runs out of memory
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", MEMORY_LIMIT_MB="10",
                    SPLIT_PARTS="2", SPLIT_MIN_BYTES=str(big.stat().st_size * 2 // 3))
    assert r.returncode == 0, r.stderr
    q = project.queue
    assert q["pending"] == [] and q["processing"] == [] and q["completed"] == []
    assert len(q["failed"]) == 2 and all("/splits/" in p for p in q["failed"])
    for p in q["failed"]:
        assert "MEMORY_LIMIT_MB" in q["files"][p]["reason"] and "SPLIT_MIN_BYTES" in q["files"][p]["reason"]
    assert "out of memory" in project.checkpoint["failed_files"][str(big)]["reason"]
    # with memory enough, --retry-failed finishes the parts, then the original
    project.run("generate_file_queue.py", "--retry-failed")
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    q = project.queue
    assert q["completed"] == [str(big)] and q["failed"] == [], q


def test_sigterm_releases_or_finishes_the_current_file(project, api, clean):
    fill(project)
    project.run("generate_file_queue.py")
    api.set_faults(latency_ms=40)
    worker = start_worker(project)
    child_pid(project, worker)
    base = answered(api)
    wait_for(lambda: answered(api) > base, 60, "a child's first answer")  # mid-file
    started = time.time()
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert time.time() - started < 25  # inside Render's 30 s grace period
    assert worker.returncode == 7, out + err
    q = project.queue
    assert q["processing"] == [] and q["failed"] == []
    api.set_faults(latency_ms=0)
    finish_and_compare(project, clean, api)


@pytest.mark.parametrize("files_per_child", [1, 4])
def test_three_workers_at_once_process_each_file_once(project, api, clean, files_per_child):
    fill(project)
    project.run("generate_file_queue.py")
    workers = [start_worker(project, FILES_PER_CHILD=str(files_per_child)) for _ in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]
    # the embedded store has one writer: a worker that finds it held says so and exits 8 (held elsewhere)
    codes = [w.returncode for w in workers]
    assert 0 in codes and set(codes) <= {0, 8}, outputs
    for code, (_, err) in zip(codes, outputs):
        if code == 8:
            assert err.strip().splitlines() == [err.strip().splitlines()[-1]] and "in use" in err, err
    completions = [line for _, err in outputs for line in err.splitlines() if " INFO completed " in line]
    assert len(completions) == len(CORPUS)  # no file done twice
    content, tokens = clean
    assert project.content() == content
    assert api.stats()["tokens"] == tokens
    q = project.queue
    assert len(q["completed"]) == len(CORPUS) and not q["pending"] and not q["processing"]


def test_a_second_worker_on_a_busy_embedded_store_exits_8_at_once(project, api, clean):
    fill(project)
    project.run("generate_file_queue.py")
    api.set_faults(latency_ms=300)
    first = start_worker(project)
    child_pid(project, first)  # the first worker is ingesting
    second = project.run("process_queue_worker.py", MAX_ITERATIONS="0", timeout=60)
    assert second.returncode == 8, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "in use by another process" in second.stderr
    assert first.wait(timeout=300) == 0
    api.set_faults(latency_ms=0)
    finish_and_compare(project, clean, api)


READER = """
import sys
sys.path.insert(0, sys.argv[1])
from ingestion.common import settings
from ingestion.storage.store import Store
with Store(settings.load(), wait=False, check=None, create=False):  # as --status opens it
    print("held", flush=True)
    sys.stdin.readline()  # held until the test says
"""


def _has_open(pid: int, path) -> bool:
    """Whether process pid has path open (it is trying for the lock on it)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):  # it ended, or a descriptor closed while listed
        return False


def test_a_worker_waits_for_a_status_look_instead_of_exiting_8(project, api, clean):
    """--status (or a query) holds the embedded store for a moment: a cron run starting then must not be lost."""
    fill(project)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(ROOT)], env=project.env, stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "held"
    worker = start_worker(project)
    # the worker has met the held store (it has its lock file open, waiting), and the look is still going on
    wait_for(lambda: _has_open(worker.pid, project.chroma / ".ingestion.lock") or worker.poll() is not None, 120,
             "the worker to try for the store")
    assert reader.poll() is None and worker.poll() is None, worker.communicate()
    reader.stdin.write("done\n")
    reader.stdin.close()
    assert reader.wait(timeout=30) == 0
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    finish_and_compare(project, clean, api)
