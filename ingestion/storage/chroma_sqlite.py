"""Chroma's SQLite database (chroma.sqlite3), set up for a big store: planner statistics, and how often
the full-text index merges. Both are SQLite's own, kept in the database; Chroma sets neither.

- Planner statistics. Chroma (embedded, or a `chroma run` server) keeps each record's metadata in SQLite
  and finds records by metadata (a file's chunks by `source`, a text by `content_sha256`) with one query
  naming both the collection's segment and the metadata. Without statistics SQLite's planner takes the
  index on (segment_id, embedding_id) and reads every record of the segment: 75 ms a lookup at 620,000
  vectors (5 ms empty), two lookups a file. With statistics that say what is true of any store this
  project writes (a segment holds about half the records; a metadata key and value a handful) it takes
  the metadata index: 1-2 ms at 620,000. The numbers are shapes, not counts, so they hold from the first
  record to millions: written once, where missing, never stale. An ANALYZE run later by anyone replaces
  them with counted ones of the same shape.
- The full-text index (FTS5, trigrams of every chunk's text, for `where_document`) merges its segments
  as it grows, 4 at a time by default (`automerge`): at 620,000 vectors that work is most of what a write
  of chunks costs. AUTOMERGE merges 16 at a time: fewer, larger merges, the same index
  (https://www.sqlite.org/fts5.html#the_automerge_configuration_option).

Written from a process of its own (`python chroma_sqlite.py DB`): two copies of SQLite in one process
(Python's and Chroma's) must not open the same database, as closing the file in one drops the other's
locks (https://www.sqlite.org/howtocorrupt.html, 2.2.1). A process that has the database open takes the
new settings at its next statement: the last step (ANALYZE of a small table) changes the schema's
version, which makes every connection read the schema and its statistics again.

This file imports only the standard library: it runs as a script, beside `chroma run` too (`--wait`:
until the server has made its database).
"""
from __future__ import annotations

import argparse
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

DB_FILE = "chroma.sqlite3"
# (table, index, stat): rows in the table, then rows for a value of the index's first column, of its
# first two columns. embeddings(segment_id, embedding_id): a segment is half the table, an id one
# record. embedding_metadata(key, string_value): a key is one of ~8, a value a few records (a file's
# `source` ~60, a text's `content_sha256` 1).
STATS = (("embeddings", "sqlite_autoindex_embeddings_1", "1000000 500000 1"),
         ("embedding_metadata", "embedding_metadata_string_value", "8000000 1000000 4"))
FTS = "embedding_fulltext_search"
AUTOMERGE = 16        # FTS5's default is 4
TOUCH = "max_seq_id"  # a small table of Chroma's: analysing it changes the schema's version
TIMEOUT = 30.0        # seconds to wait for Chroma's own write lock
_set_up: set[Path] = set()  # databases this process has seen set up (a run opens its store more than once)


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def to_do(con: sqlite3.Connection) -> list[str] | None:
    """What is missing ("stats", "automerge"); None when the database is not Chroma's (yet)."""
    tables = _tables(con)
    if not {"embeddings", "embedding_metadata", TOUCH} <= tables:
        return None
    out = []
    have = {tuple(r) for r in con.execute("SELECT tbl, idx FROM sqlite_stat1")} if "sqlite_stat1" in tables else set()
    if any((t, i) not in have for t, i, _ in STATS):
        out.append("stats")
    if FTS in tables:
        row = con.execute(f"SELECT v FROM {FTS}_config WHERE k = 'automerge'").fetchone()
        if not row or row[0] != AUTOMERGE:
            out.append("automerge")
    return out


def write(db: Path) -> str:
    """Set db up where it is not: 'written', 'present' or 'not a Chroma database'."""
    con = sqlite3.connect(db, timeout=TIMEOUT, isolation_level=None)
    try:
        missing = to_do(con)
        if missing is None:
            return "not a Chroma database"
        if not missing:
            return "present"
        con.execute("BEGIN IMMEDIATE")
        if "stats" in missing:
            con.execute("ANALYZE sqlite_schema")  # makes sqlite_stat1 where there is none
            for table, index, stat in STATS:
                con.execute("DELETE FROM sqlite_stat1 WHERE tbl = ? AND idx = ?", (table, index))
                con.execute("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, index, stat))
        if "automerge" in missing:
            con.execute(f"INSERT INTO {FTS} ({FTS}, rank) VALUES ('automerge', ?)", (AUTOMERGE,))
        con.execute(f"ANALYZE {TOUCH}")
        con.execute("COMMIT")
        return "written"
    finally:
        con.close()


def ensure(folder: Path) -> None:
    """Embedded store at folder: set its database up where it is not, from a process of its own (once a
    process: the worker's pre-flight check and its own opening both come here). Never fails the caller:
    without it, a big store is only slower."""
    db = (Path(folder) / DB_FILE).resolve()
    if db in _set_up:
        return  # (they never go stale: nothing to look at again)
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(db)], capture_output=True,
                              text=True, timeout=TIMEOUT + 30)
        if done.returncode:
            log.warning("the store's SQLite settings were not written (%s): a big store will be slower",
                        (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
        else:
            _set_up.add(db)
            log.debug("SQLite settings of %s: %s", db, done.stdout.strip())
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("the store's SQLite settings were not written (%s): a big store will be slower", e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Set a Chroma database up for a big store, where it is not: SQLite planner statistics for "
                    "lookups by metadata, and the full-text index's merge setting. Exit codes: 0 written or "
                    "already there, 1 failed (or not a Chroma database), 2 usage.")
    parser.add_argument("db", type=Path, help="the database: CHROMA_PATH/chroma.sqlite3 (or a server's --path)")
    parser.add_argument("--wait", action="store_true",
                        help="wait (looking every second) until the file exists and is Chroma's: beside `chroma run`")
    args = parser.parse_args(argv)
    while True:
        try:
            outcome = write(args.db) if args.db.exists() else "no such file"
        except sqlite3.Error as e:
            print(f"chroma_sqlite: {args.db}: {e}", file=sys.stderr)
            return 1
        if outcome in ("written", "present") or not args.wait:
            print(outcome)
            return 0 if outcome in ("written", "present") else 1
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
