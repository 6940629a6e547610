"""Unit tests: state files (atomic, locked, backed up), queue moves, reading and splitting files."""
from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL, ROOT, SAMPLE_TRANSCRIPT
from waiting import wait_for

from ingestion.common import atomicfile, settings
from ingestion.common.errors import FileRejected, StateFileError
from ingestion.text import file_parts, textfile
from ingestion.tracking import file_queue, state


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKPOINT_DIR", str(tmp_path / "ck"))
    monkeypatch.setenv("TRANSCRIPTS_DIR", str(tmp_path / "tx"))
    return settings.load()


ADD_PENDING = """
import os, sys
sys.path.insert(0, sys.argv[1])
from ingestion.common import settings
from ingestion.tracking import state
cfg = settings.load()
for i in range(40):
    with state.transaction(cfg) as (q, _):
        q["pending"].append(f"/x/{os.getpid()}-{i}")
"""


def test_concurrent_transactions_lose_no_update(cfg):
    # real processes (not fork: a forked multi-threaded test process can deadlock)
    env = {**os.environ, "CHECKPOINT_DIR": str(cfg.checkpoint_dir), "TRANSCRIPTS_DIR": str(cfg.transcripts_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", ADD_PENDING, str(ROOT)], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    q = json.loads(cfg.queue_path.read_text())
    assert len(q["pending"]) == 120 and len(set(q["pending"])) == 120


def test_damaged_queue_falls_back_to_its_backup(cfg):
    with state.transaction(cfg) as (q, _):
        q["pending"].append("/a")
    with state.transaction(cfg) as (q, _):
        q["pending"].append("/b")
    cfg.queue_path.write_text('{"pending": ["/a", "/b"')  # truncated
    with state.transaction(cfg) as (q, _):
        assert q["pending"] == ["/a"]  # the backup: one write older, never an empty reset


def test_damaged_queue_without_backup_is_a_clear_error(cfg):
    cfg.checkpoint_dir.mkdir(parents=True)
    cfg.queue_path.write_text("not json")
    with pytest.raises(StateFileError) as e:
        with state.transaction(cfg):
            pass
    assert "file_queue.json" in str(e.value) and "generate_file_queue.py" in str(e.value)
    assert cfg.queue_path.read_text() == "not json"  # left for the user to look at


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomicfile.write_atomic(path, '{"v": 1}')

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateFileError, match="No space left"):
        atomicfile.write_atomic(path, '{"v": 2}')
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_queue_moves_keep_one_list_per_path():
    q = file_queue.empty()
    q["pending"] = ["/a", "/b"]
    assert file_queue.claim(q) == "/a"
    assert q["processing"] == ["/a"] and q["files"]["/a"]["lease"]["pid"] == os.getpid()
    file_queue.fail(q, "/a", "bad")
    assert q["failed"] == ["/a"] and q["files"]["/a"]["reason"] == "bad"
    assert file_queue.claim(q, accept=lambda p: p != "/b") is None
    file_queue.claim(q, "/b")
    assert file_queue.retry_later(q, "/b", "429", max_attempts=2) is True
    file_queue.claim(q, "/b")
    assert file_queue.retry_later(q, "/b", "429", max_attempts=2) is False
    assert q["failed"] == ["/a", "/b"] and "gave up after 2 attempts" in q["files"]["/b"]["reason"]


def test_stale_lease_of_a_dead_process_is_released():
    q = file_queue.empty()
    q["pending"] = ["/a"]
    file_queue.claim(q)
    q["files"]["/a"]["lease"]["pid"] = 2 ** 22 + 12345  # no such process
    assert file_queue.release_stale(q, lease_seconds=3600) == ["/a"]
    assert q["pending"] == ["/a"]
    file_queue.claim(q)  # a live lease (ours) stays
    assert file_queue.release_stale(q, lease_seconds=3600) == []


def test_other_hosts_lease_expires():
    lease = {"pid": 1, "host": "elsewhere", "started": 0, "renewed": 1000}
    assert file_queue.lease_alive(lease, 60, now=1030)
    assert not file_queue.lease_alive(lease, 60, now=1061)


@pytest.mark.parametrize("raw,encoding,text", [
    (codecs.BOM_UTF8 + "héllo\r\nworld\r".encode(), "utf-8-sig", "héllo\nworld\n"),
    (codecs.BOM_UTF16_LE + "hé\r\nllo".encode("utf-16-le"), "utf-16", "hé\nllo"),
    ("café – “quotes”".encode("cp1252"), "cp1252", "café – “quotes”"),
    (b"plain\rold mac\r", "utf-8", "plain\nold mac\n"),
])
def test_encodings_and_line_ends(tmp_path, raw, encoding, text):
    p = tmp_path / "t.txt"
    p.write_bytes(raw)
    info = textfile.inspect(p)
    assert info.encoding == encoding
    assert "".join(textfile.iter_text(p, info)) == text


def test_crlf_split_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(textfile, "READ_BLOCK", 4)
    p = tmp_path / "t.txt"
    p.write_bytes(b"abc\r\ndef\r\n")
    assert "".join(textfile.iter_text(p, textfile.inspect(p))) == "abc\ndef\n"


def test_binary_and_unreadable_files_are_rejected(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(b"text\x00more")
    with pytest.raises(FileRejected, match="binary"):
        textfile.inspect(p)
    q = tmp_path / "secret.txt"
    q.write_text("x")
    q.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(FileRejected, match="permission"):
            textfile.inspect(q)
        return
    # root reads anything: read it as an ordinary user instead (a forked child that gives up root),
    # in a folder that user can reach (pytest's own is root's alone)
    import shutil
    import tempfile

    reachable = Path(tempfile.mkdtemp(dir="/tmp"))
    reachable.chmod(0o755)
    q = Path(shutil.move(str(q), reachable / "secret.txt"))
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            textfile.inspect(q)
            code = 1  # read although it may not be
        except FileRejected as e:
            code = 0 if "permission" in str(e) else 2
        finally:
            os._exit(code)
    # (a child killed by a signal has no exit code: waitstatus_to_exitcode gives minus the signal, never 0)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    shutil.rmtree(reachable)
    assert code == 0, {1: "read although it may not be", 2: "rejected, but not for permission",
                       3: "could not become an ordinary user"}.get(code, f"the child died: {code}")


def test_file_changed_while_read_is_detected(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("one")
    info = textfile.inspect(p)
    p.write_text("two")
    with pytest.raises(textfile.FileChanged):
        list(textfile.iter_text(p, info))


def test_symlinks_out_of_the_roots_are_not_allowed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("x")
    (root / "in.txt").write_text("x")
    (root / "link-out.txt").symlink_to(tmp_path / "outside.txt")
    (root / "link-in.txt").symlink_to(root / "in.txt")
    (root / "loop.txt").symlink_to(root / "loop.txt")
    assert textfile.is_allowed(root / "in.txt", [root])
    assert textfile.is_allowed(root / "link-in.txt", [root])
    assert not textfile.is_allowed(root / "link-out.txt", [root])
    assert not textfile.is_allowed(root / "loop.txt", [root])
    assert not textfile.is_allowed(root / ".." / "outside.txt", [root])


@pytest.mark.parametrize("how", [{"parts": 4}, {"max_tokens": 2000}])
def test_split_parts_put_together_are_the_original(tmp_path, how):
    src = tmp_path / "case.txt"
    src.write_bytes(REAL[0].read_bytes().replace(b"\n", b"\r\n"))
    parts = file_parts.split_file(src, tmp_path / "splits", **how)
    assert len(parts) >= 2
    assert [p.name for p in parts] == [f"case_{i:02d}.txt" for i in range(1, len(parts) + 1)]
    assert b"".join(p.read_bytes() for p in parts) == src.read_bytes()
    if "parts" in how:
        assert len(parts) == 4
    else:
        from ingestion.text.chunking import count_tokens
        assert all(count_tokens(p.read_text()) <= 2000 for p in parts)


def test_split_prefers_speaker_turns(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text((SAMPLE_TRANSCRIPT + "\n") * 40)
    parts = file_parts.split_file(src, tmp_path / "out", parts=3)
    assert len(parts) == 3, parts  # (one part has no second part to start at a turn: the loop would check nothing)
    for part in parts[1:]:
        first = part.read_text().lstrip("\n")
        assert first.startswith(("[", "CAROL:")), first[:40]


def test_capacity_warning_before_the_embedded_index_outgrows_memory(cfg, monkeypatch):
    from ingestion.run import capacity, worker

    monkeypatch.setattr(worker.procinfo, "memory_budget_bytes", lambda: 4 * 2**30)  # a 4 GB machine
    assert worker.capacity_warning(cfg, 100_000) is None
    warning = worker.capacity_warning(cfg, 550_000)
    # (the plan's measured constants: ~498,000 vectors of 1536 dimensions in 90% of 4 GB with 4 children)
    assert f"room for about {capacity.most_vectors(4 * 2**30, 1536, 4):,}." in warning and "CHROMA_HOST" in warning
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "512")  # a third of the dimensions: three times the room
    assert worker.capacity_warning(settings.load(), 550_000) is None
    monkeypatch.setenv("CHROMA_HOST", "chroma.internal")  # the server holds the index, not us
    assert worker.capacity_warning(settings.load(), 10_000_000) is None


def test_outcomes_append_to_the_checkpoint_journal_and_reading_replays_it(cfg):
    from ingestion.tracking import checkpoint

    with state.transaction(cfg) as (_, c):
        checkpoint.record_done(c, "/a", chunks=1)
    with state.transaction(cfg, checkpoint="append") as (_, c):
        checkpoint.record_done(c, "/b", chunks=2)
        checkpoint.record_failed(c, "/c", "broken", 1)
    journal = cfg.checkpoint_path.with_suffix(".journal")
    assert journal.exists() and "/b" not in cfg.checkpoint_path.read_text()  # not rewritten per outcome
    with open(journal, "ab") as f:
        f.write(b'{"op": "done", "path": "/torn"')  # a kill while appending
    with state.transaction(cfg, checkpoint="append") as (_, c):
        checkpoint.record_done(c, "/d", chunks=3)  # the next outcome is not lost behind it
    q, c = state.read(cfg)
    assert set(c["processed_files"]) == {"/a", "/b", "/d"} and set(c["failed_files"]) == {"/c"}
    with state.transaction(cfg) as _:  # a full transaction folds the journal in
        pass
    assert not journal.exists()
    assert set(json.loads(cfg.checkpoint_path.read_text())["processed_files"]) == {"/a", "/b", "/d"}


CHILDREN_SIDE_BY_SIDE = """
import multiprocessing, sys, threading, time
sys.path.insert(0, sys.argv[1])
from ingestion.run import children

def lane(ctx, codes):
    for _ in range(50):
        p = ctx.Process(target=time.sleep, args=(0,))
        if sys.argv[2] == "plain":
            p.start(); p.join(); codes.append(p.exitcode)
        else:
            children.start_child(p); codes.append(children.child_exit(p, None))

if __name__ == "__main__":
    ctx, codes = multiprocessing.get_context("forkserver"), []
    lanes = [threading.Thread(target=lane, args=(ctx, codes)) for _ in range(4)]
    [t.start() for t in lanes]; [t.join() for t in lanes]
    print(sorted(set(codes)), len(codes))
"""


def test_children_started_side_by_side_report_their_own_exit_code(tmp_path):
    # Process.start() polls the other lanes' children; read at the same time, one of them saw 255 and the
    # worker exited 255 after a clean run (CI). Started and read under the worker's lock: always 0.
    script = tmp_path / "lanes.py"
    script.write_text(CHILDREN_SIDE_BY_SIDE)
    r = subprocess.run([sys.executable, str(script), str(ROOT), "locked"], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[0] 200", r.stdout + r.stderr


def test_paid_vectors_the_store_did_not_take_are_written_once_for_their_store(cfg, tmp_path, monkeypatch):
    import numpy as np

    from ingestion.storage import paid_vectors, schema
    from ingestion.storage.store import Store

    monkeypatch.setenv("CHROMA_PATH", str(tmp_path / "chroma"))
    cfg = settings.load()
    with state.transaction(cfg) as (q, _):
        q["pending"].append("/tx/a.txt")
        q["completed"].append("/tx/done.txt")  # finished since: what was kept of it is stale or there already
    rnd = np.random.default_rng(0)
    vectors = [rnd.random(1536, dtype=np.float32) for _ in range(2)]
    metas = [schema.chunk_metadata(src, 0, 3, f"sha-{n}", "file-sha", "", "", [], "utf-8", 1)
             for n, src in enumerate(["/tx/a.txt", "/tx/done.txt"])]
    paid_vectors.save(cfg, ["id-a", "id-done"], vectors, ["text a", "text done"], metas)
    monkeypatch.setenv("CHROMA_COLLECTION", "another")
    other = paid_vectors.save(settings.load(), ["id-x"], vectors[:1], ["x"], metas[:1])
    (paid_vectors.folder(cfg) / "torn.json").write_text('{"store": ')
    with Store(cfg) as store:
        assert paid_vectors.restore(cfg, store, file_queue.completed_in(cfg.queue_path)) == 1
        got = store.get(["id-a", "id-done"], include=("documents", "metadatas", "embeddings"))
        assert got["ids"] == ["id-a"] and got["documents"] == ["text a"] and got["metadatas"] == [metas[0]]
        assert np.allclose(got["embeddings"][0], vectors[0], rtol=1e-6, atol=0)  # (the index keeps them its way)
        assert paid_vectors.restore(cfg, store, file_queue.completed_in(cfg.queue_path)) == 0  # written once: its file is gone
    assert paid_vectors.waiting(cfg) == [other]  # another collection's: left for a run on it
    assert (paid_vectors.folder(cfg) / "torn.json.damaged").exists()


def test_writes_that_wait_for_the_store_are_written_together_and_each_child_answered(cfg, tmp_path, monkeypatch):
    import threading

    import numpy as np

    from ingestion.common.errors import StoreError
    from ingestion.storage import schema
    from ingestion.storage.lent_store import Shared
    from ingestion.storage.store import Store

    monkeypatch.setenv("CHROMA_PATH", str(tmp_path / "chroma"))
    cfg = settings.load()
    rnd = np.random.default_rng(0)

    def write(n: int, ids=None):
        ids = ids or [f"id-{n}-{k}" for k in range(3)]
        metas = [schema.chunk_metadata(f"/tx/{n}.txt", k, 3, f"sha-{n}-{k}", "file-sha", "", "", [], "utf-8", 1)
                 for k in range(len(ids))]
        return ids, [rnd.random(1536, dtype=np.float32) for _ in ids], [f"text {n}"] * len(ids), metas

    with Store(cfg) as store:
        shared = Shared(store)
        errors: list = []

        def child(n: int, ids=None) -> None:
            try:
                shared.call(object(), "add", write(n, ids), {})
            except StoreError as e:
                errors.append(e)

        def while_the_store_is_busy(*writes) -> None:
            """Each (n, ids) a child's write, all sent while the store is busy; then the store is free."""
            threads = [threading.Thread(target=child, args=w) for w in writes]
            with shared.lock:
                for t in threads:
                    t.start()
                wait_for(lambda: len(shared.writes) >= len(threads), 30,
                         f"{len(threads)} writes waiting for the busy store")
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)

        while_the_store_is_busy((0,), (1,), (2,), (3, ["id-0-0"]))  # the last: an id of another write
        assert not errors
        assert shared.upserts == 2  # the three that fit together in one write; the clashing id alone after
        assert store.count() == 9 and store.get(["id-0-0"])["documents"][0] in ("text 0", "text 3")

        store.broken = "the store went away"  # a failed write: every child of the batch is told
        while_the_store_is_busy((4,), (5,))
        assert [str(e) for e in errors] == ["the store went away"] * 2 and shared.upserts == 3


def _after_preload(code: str) -> subprocess.CompletedProcess:
    """code run by a fresh interpreter from the project's root (code imports the preload first), checked."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out


def test_the_fork_servers_preload_opens_no_thread_or_socket_and_builds_the_sdks_first_request():
    # children are forked from it: a thread or a socket there would be copied into every child
    code = """
import os, threading
import ingestion.run.fork_preload
from openai import _base_client
kinds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        kinds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # (the listing's own descriptor, closed since)
        pass
print(threading.active_count(), sum(k.startswith("socket:") for k in kinds),
      _base_client.platform_headers.cache_info().currsize)
"""
    out = _after_preload(code)
    assert out.stdout.split() == ["1", "0", "1"]  # one thread, no socket, the SDK's headers built once


def test_the_fork_servers_preload_holds_what_each_child_imports_when_it_starts():
    # each child re-runs the worker's script as __mp_main__ (multiprocessing.spawn.prepare): a module the
    # script imports that the preload lacks is imported again by every child (~25 ms each, measured)
    code = """
import runpy, sys
import ingestion.run.fork_preload
before = set(sys.modules)
runpy.run_path("ingestion/process_queue_worker.py", run_name="__mp_main__")
print(sorted(set(sys.modules) - before))
"""
    out = _after_preload(code)
    assert out.stdout.strip() == "[]"


def test_a_text_stored_for_many_sources_is_looked_up_as_one_vector(tmp_path, monkeypatch):
    """A paragraph every transcript carries (a court's boilerplate) is stored once a source until
    optimize_chromadb.py dedupes it: the lookup that reuses its vector brings back one, not one a source
    (300 of 1536 dimensions: ~2 MB a lookup, ~60 MB at 10,000 sources, on every file)."""
    from ingestion.common.hashing import chunk_id, sha256_text
    from ingestion.storage.store import Store

    monkeypatch.setenv("CHROMA_PATH", str(tmp_path / "db"))
    monkeypatch.setenv("CHECKPOINT_DIR", str(tmp_path / "ck"))
    h = sha256_text("This transcript is a public record of the Supreme Court.")
    sources = [f"/t/{i}.txt" for i in range(300)]
    with Store(settings.load()) as store:
        store.add([chunk_id(s, h) for s in sources], [[1.0] + [0.0] * 1535] * 300, ["boilerplate"] * 300,
                  [{"source": s, "content_sha256": h} for s in sources])
        fetched, call = [], store.call

        def counting(fn, *args, **kwargs):  # (what each Chroma call brings back, counted in vectors)
            out = call(fn, *args, **kwargs)
            if isinstance(out, dict) and out.get("embeddings") is not None:
                fetched.append(len(out["embeddings"]))
            return out

        store.call = counting
        found = store.embeddings_by_content([h, sha256_text("never stored")])
    assert list(found) == [h] and len(found[h]) == 1536
    assert sum(fetched) == 1, fetched
