"""Chroma's SQLite database set up for a big store (ingestion/storage/chroma_sqlite.py): planner statistics,
the full-text index's merge setting.

Chroma finds records by metadata with one query that names both the collection's segment and the
metadata (chromadb 1.5.9's SQLite metadata reader: `SELECT ... FROM embeddings WHERE segment_id = ? AND id
IN (SELECT id FROM embedding_metadata WHERE key = ? AND string_value = ?) ORDER BY id`). How fast it is
depends only on the plan SQLite picks: reading the whole segment (75 ms a lookup at 620,000 vectors,
bench/RESULTS.md) or the metadata index (~1 ms). The plan is checked here, on stores of a few records,
since SQLite picks it from the statistics, not from the store's size: no timing. The merge setting is
checked where FTS5 keeps it (its cost is in the benchmark: bench/RESULTS.md).

The test process never opens a database with Python's sqlite3 while Chroma has it open in this process
(the stores are made by the scripts or by a child process).
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "ingestion" / "storage" / "chroma_sqlite.py"
LOOKUP = ("SELECT id, embedding_id FROM embeddings WHERE segment_id = ? AND id IN "
          "(SELECT id FROM embedding_metadata WHERE key = ? AND string_value = ?) ORDER BY id LIMIT 1000")


def plan(con: sqlite3.Connection) -> str:
    segment = con.execute("SELECT id FROM segments WHERE scope = 'METADATA' LIMIT 1").fetchone()[0]
    return " | ".join(r[-1] for r in con.execute("EXPLAIN QUERY PLAN " + LOOKUP, (segment, "source", "/x")))


def reads_the_whole_segment(text: str) -> bool:
    return "sqlite_autoindex_embeddings_1 (segment_id=?)" in text


def chroma_store(folder: Path, records: int = 20) -> Path:
    """A Chroma store with records, made by a child process; its database."""
    code = textwrap.dedent(f"""
        import chromadb
        from chromadb.config import Settings
        col = chromadb.PersistentClient(path={str(folder)!r}, settings=Settings(anonymized_telemetry=False)
                                        ).get_or_create_collection("chunks", embedding_function=None)
        n = {records}
        col.add(ids=[str(i) for i in range(n)], embeddings=[[float(i), 1.0] for i in range(n)],
                metadatas=[{{"source": "/f%d" % (i % 3)}} for i in range(n)], documents=["t"] * n)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return folder / "chroma.sqlite3"


def set_up(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_without_statistics_the_lookup_reads_the_whole_segment_and_with_them_the_index(tmp_path):
    db = chroma_store(tmp_path / "store")
    with sqlite3.connect(db) as con:
        assert reads_the_whole_segment(plan(con)), plan(con)  # what a store made by Chroma alone does
    first, again = set_up(db), set_up(db)
    assert (first.returncode, first.stdout.strip()) == (0, "written"), first.stderr
    assert (again.returncode, again.stdout.strip()) == (0, "present"), again.stderr
    with sqlite3.connect(db) as con:
        text = plan(con)
        assert not reads_the_whole_segment(text) and "embedding_metadata_string_value" in text, text
        rows = con.execute("SELECT tbl, idx FROM sqlite_stat1").fetchall()
        merge = con.execute("SELECT v FROM embedding_fulltext_search_config WHERE k = 'automerge'").fetchone()
    assert ("embeddings", "sqlite_autoindex_embeddings_1") in rows
    assert merge == (16,)  # FTS5's default (no row) is 4


def test_a_connection_already_open_takes_the_statistics_at_its_next_statement(tmp_path):
    """As Chroma's own connections, open in the worker (or the server) before the statistics are written."""
    db = chroma_store(tmp_path / "store")
    with sqlite3.connect(db, cached_statements=0) as con:  # (a cached EXPLAIN would show the old plan)
        assert reads_the_whole_segment(plan(con))
        assert set_up(db).stdout.strip() == "written"
        con.execute("SELECT count(*) FROM segments").fetchone()  # a statement that reads (EXPLAIN does not)
        assert not reads_the_whole_segment(plan(con)), plan(con)


def test_the_scripts_write_them_into_the_store_they_make(project, api):
    project.add("a.txt", "Some words about the harbour. " * 50)
    project.ingest_all()
    with sqlite3.connect(project.chroma / "chroma.sqlite3") as con:
        assert not reads_the_whole_segment(plan(con)), plan(con)


def test_a_store_made_before_them_gets_them_at_the_next_run(project, api):
    project.add("a.txt", "Some words about the harbour. " * 50)
    project.ingest_all()
    db = project.chroma / "chroma.sqlite3"
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE sqlite_stat1")
    with sqlite3.connect(db) as con:
        assert reads_the_whole_segment(plan(con)), plan(con)
    project.add("b.txt", "Other words about the dredging. " * 50)
    project.ingest_all()
    with sqlite3.connect(db) as con:
        assert not reads_the_whole_segment(plan(con)), plan(con)


def test_what_is_not_a_chroma_database_is_left_alone(tmp_path):
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (a)")
    result = set_up(other)
    assert (result.returncode, result.stdout.strip()) == (1, "not a Chroma database")
    with sqlite3.connect(other) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["t"]
    missing = set_up(tmp_path / "none.sqlite3")
    assert (missing.returncode, missing.stdout.strip()) == (1, "no such file")
    assert not (tmp_path / "none.sqlite3").exists()


def test_beside_a_server_it_waits_for_the_database_then_writes(tmp_path):
    """--wait, as beside `chroma run` on a new disk: the server makes its database after it starts."""
    db = tmp_path / "store" / "chroma.sqlite3"
    waiting = subprocess.Popen([sys.executable, str(SCRIPT), "--wait", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        chroma_store(tmp_path / "store")
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert (waiting.returncode, out.strip()) == (0, "written")
    with sqlite3.connect(db) as con:
        assert not reads_the_whole_segment(plan(con))
