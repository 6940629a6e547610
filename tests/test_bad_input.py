"""Bad input: every file ends completed or failed with a reason; nothing crashes the worker;
nothing outside TRANSCRIPTS_DIR is read; the key shows up nowhere."""
from __future__ import annotations

import codecs
import hashlib
import json
import os

from conftest import API_KEY, SAMPLE_TRANSCRIPT

TEXT = "ALICE: We met on Tuesday. The minutes were approved.\n\nBOB: Thank you.\n"
# 1 MB on one line, no space, never repeating (identical chunks of one file are stored once)
LONG_LINE = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(1_000_000 // 64))


def test_every_kind_of_bad_input_gets_an_outcome(project, api, tmp_path):
    p = project.add
    expect_done = [
        p("utf8-bom.txt", codecs.BOM_UTF8 + TEXT.encode()),
        p("utf16.txt", codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le")),
        p("cp1252.txt", "Caf\xe9 \u201cquotes\u201d \u2013 na\xefve r\xe9sum\xe9.\n".encode("cp1252")),
        p("invalid-utf8.txt", b"valid start \xff\xfe\xfd then more text\n"),
        p("crlf.txt", TEXT.replace("\n", "\r\n")),
        p("lone-cr.txt", TEXT.replace("\n", "\r")),
        p("one-long-line.txt", LONG_LINE),
        p("dense-word.txt", "😀" * 3000 + " " + "x" * 30000),
        p("deep/a/b/c/d/e/f/g/h/i/j/deep.txt", TEXT),
        p("name with spaces 'and' \"quotes\".txt", TEXT),
        p("line\nbreak.txt", TEXT),
        p("ünïcödé-名前.txt", TEXT),
    ]
    expect_failed = {
        p("empty.txt", ""): "empty",
        p("blank.txt", "  \n\n\t \n"): "empty",
        p("nul.txt", b"some\x00binary\x00data"): "binary",
    }
    p("notes.md", TEXT)  # not *.txt: ignored
    p("data.csv", "a,b\n")
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("SECRET outside the corpus\n")
    os.symlink(outside, project.transcripts / "link-outside.txt")
    os.symlink(project.transcripts / "utf8-bom.txt", project.transcripts / "link-inside.txt")
    os.symlink(project.transcripts / "loop.txt", project.transcripts / "loop.txt")
    expect_done.append(project.transcripts / "link-inside.txt")

    gen = project.run("generate_file_queue.py", "--show-skipped")
    assert gen.returncode == 0, gen.stderr
    assert "link-outside.txt" in gen.stdout and "loop.txt" in gen.stdout
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr

    q = project.queue
    assert q["pending"] == [] and q["processing"] == []
    assert sorted(q["completed"]) == sorted(map(str, expect_done))
    assert sorted(q["failed"]) == sorted(map(str, expect_failed))
    for path, why in expect_failed.items():
        assert why in q["files"][str(path)]["reason"]
        assert why in project.checkpoint["failed_files"][str(path)]["reason"]
    stored = project.chunks()
    assert all(API_KEY not in d and "SECRET" not in d for d, _ in stored.values())
    by_source = {}
    for d, m in stored.values():
        by_source.setdefault(os.path.basename(m["source"]), []).append(d)
    assert "Café “quotes” – naïve résumé." in by_source["cp1252.txt"][0]
    assert by_source["utf16.txt"] == by_source["utf8-bom.txt"]
    assert "\r" not in "".join(by_source["crlf.txt"] + by_source["lone-cr.txt"])
    assert sum(len(d) for d in by_source["one-long-line.txt"]) == len(LONG_LINE)
    for f in project.checkpoints.rglob("*"):
        if f.is_file():
            assert API_KEY not in f.read_text(errors="replace")
    assert API_KEY not in gen.stdout + gen.stderr + r.stdout + r.stderr


def test_queued_paths_outside_the_allowed_folders_are_never_read(project, api, tmp_path):
    project.add("fine.txt", TEXT)
    project.run("generate_file_queue.py")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("SECRET that must not be embedded\n")
    q = project.queue
    q["pending"].insert(0, str(outside))
    q["pending"].insert(0, str(project.transcripts / ".." / "elsewhere.txt"))
    (project.checkpoints / "file_queue.json").write_text(json.dumps(q))
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0
    q = project.queue
    # the two spellings are one file (one path is one file): one failed entry, under its canonical path
    assert q["failed"] == [str(outside)] and "outside TRANSCRIPTS_DIR" in q["files"][str(outside)]["reason"]
    assert all("SECRET" not in d for d, _ in project.chunks().values())
    assert api.stats()["tokens"] == sum(m["token_count"] for _, m in project.chunks().values())


def test_file_deleted_or_changed_after_queueing(project, api):
    gone = project.add("gone.txt", TEXT)
    changed = project.add("changed.txt", TEXT)
    project.run("generate_file_queue.py")
    gone.unlink()
    changed.write_text(SAMPLE_TRANSCRIPT)
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0
    q = project.queue
    assert q["failed"] == [str(gone)] and "not found" in q["files"][str(gone)]["reason"]
    assert q["completed"] == [str(changed)]
    docs = " ".join(d for d, _ in project.chunks().values())
    assert "harbour" in docs and "minutes were approved" not in docs
    # the scan then reports it gone and a re-run changes nothing
    gen = project.run("generate_file_queue.py")
    assert "1 gone from disk" in gen.stdout


def test_damaged_state_files_are_recovered_or_named(project, api):
    project.add("a.txt", TEXT)
    project.add("b.txt", SAMPLE_TRANSCRIPT)
    project.run("generate_file_queue.py")
    project.run("process_queue_worker.py")  # one file done: the queue has a backup now
    queue = project.checkpoints / "file_queue.json"
    queue.write_text(queue.read_text()[:40])  # truncated
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    assert "damaged" in r.stderr and "backup" in r.stderr
    assert len(project.queue["completed"]) == 2
    api.reset()
    # no backup either: one clear line naming the file, exit 2, nothing reset
    for name in ("file_queue.json", "checkpoint.json"):
        (project.checkpoints / name).write_text("{oops")
        (project.checkpoints / (name + ".bak")).write_text("{oops")
        r = project.run("process_queue_worker.py")
        assert r.returncode == 2
        assert name in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert (project.checkpoints / name).read_text() == "{oops"
        (project.checkpoints / name).unlink()
        (project.checkpoints / (name + ".bak")).unlink()
    # both gone: rebuilt from the folder and the store, nothing embedded again
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    assert "2 already in the store" in r.stdout
    assert api.stats()["requests"] == 0
