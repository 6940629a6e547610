"""The cost of a write into Chroma's full-text index as it grows, by FTS5 `automerge` setting.

Chroma keeps every chunk's text in an FTS5 table with the trigram tokenizer (embedding_fulltext_search);
each write of chunks is one transaction, which adds one segment to the index, and FTS5 merges segments
as they pile up, `automerge` at a time (default 4). This fills such a table alone (plain SQLite, no
Chroma, no vectors) with N texts of 2,000 characters cut from a real transcript, 60 a transaction (a
write of ~2 files), and prints the mean time a transaction over each window of 60,000 texts, and the
time of a `LIKE '%...%'` lookup (what Chroma's `where_document` $contains runs).

    python3 bench/fts_merge.py --automerge 4 16 --texts 620000

storage/chroma_sqlite.py sets automerge 16 on the stores this project writes.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = sorted((ROOT / "tests" / "fixtures" / "real").glob("*.txt"))[0]
BATCH, WINDOW, SIZE = 60, 60_000, 2_000


def fill(automerge: int, texts: int, folder: Path) -> list[dict]:
    text = TEXT.read_text()
    rng = random.Random(1)
    con = sqlite3.connect(folder / f"fts-{automerge}.db")
    con.execute("CREATE VIRTUAL TABLE f USING fts5(string_value, tokenize='trigram')")
    con.execute("INSERT INTO f (f, rank) VALUES ('automerge', ?)", (automerge,))
    con.commit()
    rows, window, out = 0, [], []
    while rows < texts:
        batch = []
        for j in range(BATCH):
            i = rng.randrange(0, len(text) - SIZE)
            batch.append((rows + j, text[i:i + SIZE]))
        start = time.perf_counter()
        con.executemany("INSERT INTO f (rowid, string_value) VALUES (?, ?)", batch)
        con.commit()
        window.append(time.perf_counter() - start)
        rows += BATCH
        if rows % WINDOW < BATCH:
            start = time.perf_counter()
            con.execute("SELECT count(*) FROM f WHERE string_value LIKE '%dredging%'").fetchone()
            out.append({"automerge": automerge, "texts": rows, "write_ms": 1000 * statistics.mean(window),
                        "lookup_ms": 1000 * (time.perf_counter() - start)})
            print(f"automerge {automerge}: {rows:>9,} texts, {out[-1]['write_ms']:6.1f} ms a write of {BATCH} "
                  f"(mean of the window), lookup {out[-1]['lookup_ms']:.1f} ms", flush=True)
            window = []
    con.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--automerge", type=int, nargs="+", default=[4, 16], help="settings to compare (default 4 16)")
    ap.add_argument("--texts", type=int, default=620_000, help="texts in the end (default 620,000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for automerge in args.automerge:
            fill(automerge, args.texts, Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
