#!/usr/bin/env python3
"""Build a benchmark corpus of realistic transcripts from the project's real ones.

The two real transcripts in tests/fixtures/real/ (Supreme Court oral arguments,
PDF-extracted: numbered lines, blank lines between them, page headers) are cut
into runs of consecutive lines ("passages": 4 to 20 non-blank lines, kept
verbatim, starting anywhere). Each output file is a header line plus passages
drawn at random until it reaches --size-kb. A file's passages come from its own
random generator, seeded by (seed, file number), so:

- the same seed always gives the same bytes (checked by --verify);
- files differ: passages start at random lines and are shorter than a 500-token
  chunk, so two files practically never share a whole chunk (which would let a
  deduplicating pipeline skip embedding it: that is measured, not assumed, in
  bench/run_bench.py's "distinct chunks" check).

Standard library only.

    python3 bench/make_corpus.py --files 200 --size-kb 60 --seed 1 --out bench/work/corpus
    python3 bench/make_corpus.py --one-file-mb 200 --out bench/work/huge     # memory test
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "real"
MIN_LINES, MAX_LINES = 4, 20  # non-blank lines per passage


def load_lines(fixtures: Path = FIXTURES) -> list[list[str]]:
    """Each fixture as a list of lines (with their line ends), in a stable order."""
    sources = []
    for path in sorted(fixtures.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        sources.append(text.splitlines(keepends=True))
    if not sources:
        raise SystemExit(f"no .txt fixtures in {fixtures}")
    return sources


def passage(rng: random.Random, sources: list[list[str]]) -> str:
    """A run of consecutive lines holding MIN_LINES..MAX_LINES non-blank lines."""
    lines = rng.choice(sources)
    want = rng.randint(MIN_LINES, MAX_LINES)
    start = rng.randrange(len(lines))
    out, got, i = [], 0, start
    while got < want:
        line = lines[i % len(lines)]
        out.append(line)
        if line.strip():
            got += 1
        i += 1
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


def build_text(rng: random.Random, sources, size: int, title: str) -> str:
    parts = [f"{title}\n\n"]
    total = len(parts[0].encode())
    while total < size:
        p = passage(rng, sources)
        parts.append(p)
        total += len(p.encode())
    return "".join(parts)


def make_files(out: Path, files: int, size_kb: float, seed: int, sources=None) -> list[Path]:
    sources = sources or load_lines()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        rng = random.Random(f"{seed}:{i}")
        text = build_text(rng, sources, int(size_kb * 1024),
                          f"Oral argument transcript {i:05d} (benchmark corpus, seed {seed})")
        path = out / f"transcript_{i:05d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def make_huge(out: Path, megabytes: float, seed: int, sources=None) -> Path:
    """One file of about `megabytes` MB, written as it is built (flat memory)."""
    sources = sources or load_lines()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"huge_{megabytes:g}mb_seed{seed}.txt"
    rng = random.Random(f"{seed}:huge")
    target = int(megabytes * 1024 * 1024)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        head = f"Oral argument transcripts, one huge file (benchmark corpus, seed {seed})\n\n"
        f.write(head)
        written += len(head)
        while written < target:
            p = passage(rng, sources)
            f.write(p)
            written += len(p.encode())
    return path


def digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200, help="number of transcripts (default 200)")
    ap.add_argument("--size-kb", type=float, default=60, help="size of each, KB (default 60: about 1 hour)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--one-file-mb", type=float, help="instead: write ONE file of this many MB")
    ap.add_argument("--verify", action="store_true", help="build twice and check the bytes are equal")
    args = ap.parse_args(argv)
    sources = load_lines()
    if args.one_file_mb:
        path = make_huge(args.out, args.one_file_mb, args.seed, sources)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if args.out.exists() and any(args.out.glob("transcript_*.txt")):
        for old in args.out.glob("transcript_*.txt"):  # a smaller --files must not leave extras
            old.unlink()
    paths = make_files(args.out, args.files, args.size_kb, args.seed, sources)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 2**20:.2f} MiB, to {args.out} (digest {digest(paths)})")
    if args.verify:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            again = make_files(Path(tmp), args.files, args.size_kb, args.seed, sources)
            ok = digest(again) == digest(paths)
        print("deterministic: " + ("yes" if ok else "NO"))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
