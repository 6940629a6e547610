"""The store against a real `chroma run` server: leases that hold for workers on different machines, and
the one-line messages of a store that cannot be reached or configured.

Leases are taken without waiting (store.Store.claim: an add that never replaces a record, then a read);
these tests race real processes for the same files at the same moment.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE_TRANSCRIPT, free_port, start_chroma

sys.path.insert(0, str(ROOT))
from ingestion.common import settings  # noqa: E402
from ingestion.common.hashing import source_key  # noqa: E402
from ingestion.storage.store import Store  # noqa: E402

WORKER = ROOT / "ingestion" / "process_queue_worker.py"


@pytest.fixture
def server(chroma_server):
    """The session's server (conftest), with a collection no other test has used."""
    return chroma_server


def open_store(env: dict) -> Store:
    """A Store of this process on the server env names (the settings of a worker, read from the environment)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Store(settings.load())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- leases -------------------------------------------------------------------------------------
# A racer: its own process and Chroma client, as a worker on another machine. For each round it says
# "ready", waits for "go" on stdin (sent to every racer at once: a barrier), claims the round's file and
# prints whether it got it.
RACER = r"""
import json, os, sys
sys.path.insert(0, os.environ["PROJECT_ROOT"])
from ingestion.common import settings
from ingestion.storage.store import Store

owner = sys.argv[1]
with Store(settings.load()) as store:
    for line in sys.stdin:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            break
        source = line.strip()
        other = store.claim(source, owner, 600)
        print(json.dumps({"source": source, "got": other is None, "other": other}), flush=True)
"""


def race(env: dict, sources: list[str], racers: int = 4) -> dict[str, list[str]]:
    """Racer processes claim each source at the same moment; returns source -> the owners that got it."""
    owners = [f"machine-{n}:{1000 + n}" for n in range(racers)]  # other machines: taken at their word
    procs = [subprocess.Popen([sys.executable, "-c", RACER, owner], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **env, "PROJECT_ROOT": str(ROOT)}) for owner in owners]
    got: dict[str, list[str]] = {s: [] for s in sources}
    try:
        for source in sources:
            for p in procs:
                p.stdin.write(source + "\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "ready", "a racer ended early"
            for p in procs:  # the barrier: all go at once
                p.stdin.write("go\n")
                p.stdin.flush()
            for owner, p in zip(owners, procs):
                answer = json.loads(p.stdout.readline())
                assert answer["source"] == source
                if answer["got"]:
                    got[source].append(owner)
                else:
                    assert answer["other"] in owners, answer
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    return got


def test_racing_claims_leave_each_file_one_holder(server):
    """Four processes claim each file at the same moment: one gets it, the others are told who has it.
    Half the files carry a lease that is over (another machine's, ended): the race is for the next slot."""
    sources = [f"/transcripts/race-{n}.txt" for n in range(24)]
    with open_store(server) as store:
        for source in sources[::2]:  # leases of a worker that stopped renewing them
            assert store.claim(source, "machine-gone:1", -1) is None
    got = race(server, sources)
    assert {s: len(owners) for s, owners in got.items()} == {s: 1 for s in sources}
    with open_store(server) as store:
        for source in sources:
            leases = store.call(store.leases.get, where={"source": source}, include=["metadatas"])["metadatas"]
            live = [m["owner"] for m in leases if m["until"] > time.time()]
            assert live == got[source]  # the holder's lease, and nobody else's


def test_a_lease_holds_until_let_go_or_over(server):
    with open_store(server) as store:
        f = "/transcripts/a.txt"
        assert store.claim(f, "machine-a:1", 600) is None
        assert store.claim(f, "machine-b:2", 600) == "machine-a:1"
        assert store.claim(f, "machine-a:1", 600) is None  # (its own lease: still its)
        store.unclaim(f, "machine-b:2")  # another's unclaim lets go of nothing
        assert store.claim(f, "machine-b:2", 600) == "machine-a:1"
        store.unclaim(f, "machine-a:1")
        assert store.claim(f, "machine-b:2", 600) is None
        # renewed, a lease lasts; one that ends is taken, by one of those who find it over
        g = "/transcripts/g.txt"
        assert store.claim(g, "machine-a:1", 1) is None
        store.renew(g, "machine-a:1", 600)
        until = store.call(store.leases.get, where={"source": g}, include=["metadatas"])["metadatas"][0]["until"]
        assert until > time.time() + 500
        assert store.claim(g, "machine-b:2", 600) == "machine-a:1"
        h = "/transcripts/h.txt"
        assert store.claim(h, "machine-a:1", -1) is None  # ended at once
        assert store.claim(h, "machine-b:2", 600) is None
        assert store.claim(h, "machine-c:3", 600) == "machine-b:2"
        # a process of this machine that is gone holds nothing
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        k = "/transcripts/k.txt"
        assert store.claim(k, f"{socket.gethostname()}:{gone}", 600) is None
        assert store.claim(k, "machine-b:2", 600) is None
        ids = store.call(store.leases.get, where={"source": k}, include=[])["ids"]
        assert sorted(ids) == [f"{source_key(k)}.0", f"{source_key(k)}.1"]


def test_two_workers_racing_for_the_same_files_pay_each_once(project, api, server):
    """Two machines (two workers, a queue each) start at once on the same transcripts and one Chroma server:
    every file is stored, and not one chunk is paid twice."""
    project.env.update(server)
    for n in range(8):
        project.add(f"f{n}.txt", "\n\n".join(SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {n}.{k}")
                                             for k in range(3)))
    api.set_faults(latency_ms=100)  # each file takes a moment: the workers meet on files in flight
    machines = [{**project.env, "MAX_ITERATIONS": "0", "CHECKPOINT_DIR": str(project.root / f"ck{i}")}
                for i in range(2)]  # (a queue each: nothing shared but the Chroma server)
    workers = [subprocess.Popen([sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for env in machines]
    results = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, out + err
    completed = set()
    for i in range(2):
        q = json.loads((project.root / f"ck{i}" / "file_queue.json").read_text())
        assert q["failed"] == [], q
        completed |= set(q["completed"])
    assert completed == {str(project.transcripts / f"f{n}.txt") for n in range(8)}
    import chromadb

    client = chromadb.HttpClient(host=server["CHROMA_HOST"], port=int(server["CHROMA_PORT"]))
    stored = client.get_collection(server["CHROMA_COLLECTION"], embedding_function=None).get(include=["metadatas"])
    assert {os.path.basename(m["source"]) for m in stored["metadatas"]} == {f"f{n}.txt" for n in range(8)}
    assert api.stats()["tokens"] == sum(m["token_count"] for m in stored["metadatas"])  # none paid twice
    held = sum(err.count("shared store lease") for _, err in results)
    print(f"files left to the other worker: {held}")


# ---- messages -----------------------------------------------------------------------------------
def one_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


def test_no_server_at_the_address_names_the_settings_and_what_to_check(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    port = str(free_port())
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", CHROMA_HOST="127.0.0.1", CHROMA_PORT=port)
    assert r.returncode == 2
    line = one_line(r)
    assert f"cannot reach the Chroma server at http://127.0.0.1:{port}" in line
    assert f"CHROMA_HOST=127.0.0.1, CHROMA_PORT={port}, CHROMA_SSL=false" in line
    assert "a Chroma server is running at that address" in line and "network" in line


def test_chroma_cloud_unreachable_names_its_settings(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.run("process_queue_worker.py", CHROMA_API_KEY="ck-fake", CHROMA_TENANT="acme",
                    CHROMA_DATABASE="talks")
    assert r.returncode == 2
    line = one_line(r)
    assert "cannot reach Chroma Cloud" in line and "network" in line
    assert "CHROMA_TENANT=acme" in line and "CHROMA_DATABASE=talks" in line and "CHROMA_API_KEY" in line
    assert "ck-fake" not in line


@pytest.mark.parametrize("script", ["process_queue_worker.py", "query_chromadb.py"])
def test_an_invalid_chromadb_setting_is_one_line_and_exit_2(project, script):
    """chromadb reads settings of its own from the environment as it is imported (CHROMA_SERVER_HTTP_PORT)."""
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    args = ["harbour"] if script == "query_chromadb.py" else []
    r = project.run(script, *args, CHROMA_SERVER_HTTP_PORT="abc")
    assert r.returncode == 2, r.stderr
    line = one_line(r)
    assert "CHROMA_SERVER_HTTP_PORT='abc'" in line and "correct it, or unset it" in line
