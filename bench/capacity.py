#!/usr/bin/env python3
"""Peak RSS of one file's ingestion against a collection already holding N vectors.

    TIKTOKEN_CACHE_DIR=... python3 bench/capacity.py --sizes 0,50000,200000

For each N: fills a fresh embedded store with N random 1536-d vectors, then ingests one
60 KB transcript into it with ingest_one_file.py (embedded mode: the process loads the
whole index), then the same through a `chroma run` server on that folder (the server
holds the index; the client does not). Prints a Markdown table. Uses the local
OpenAI-compatible server at zero latency.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(path: Path, n: int) -> None:
    import chromadb
    client = chromadb.PersistentClient(path=str(path))
    col = client.get_or_create_collection("transcripts", embedding_function=None, metadata={
        "hnsw:space": "cosine", "embedding_model": "text-embedding-3-small", "embedding_dimensions": 1536})
    rnd = random.Random(1)
    for start in range(0, n, 5000):
        k = min(5000, n - start)
        col.add(ids=[f"filler-{start + i}" for i in range(k)],
                embeddings=[[rnd.random() - 0.5 for _ in range(1536)] for _ in range(k)],
                documents=["filler"] * k, metadatas=[{"source": "filler"}] * k)


def peak_kb(argv, env) -> int:
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return int(out.stderr.strip().splitlines()[-1])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,50000,200000")
    args = ap.parse_args()
    from local_openai.testing import running_server

    work = Path(tempfile.mkdtemp(prefix="capacity-"))
    transcript = next((ROOT / "bench" / "work").glob("corpus-f*/transcript_00000.txt"), None) or \
        next((ROOT / "tests" / "fixtures" / "real").glob("*.txt"))
    rows = []
    with running_server() as api:
        for n in [int(x) for x in args.sizes.split(",")]:
            store = work / f"store-{n}"
            t = time.time()
            fill(store, n)
            fill_s = time.time() - t
            tx = work / f"tx-{n}"
            tx.mkdir()
            shutil.copy(transcript, tx / "a.txt")
            base = {**os.environ, "TRANSCRIPTS_DIR": str(tx), "OPENAI_API_KEY": api.api_key,
                    "OPENAI_BASE_URL": api.base_url}
            env = {**base, "CHECKPOINT_DIR": str(work / f"ck-{n}"), "CHROMA_PATH": str(store)}
            subprocess.run([sys.executable, str(ROOT / "ingestion" / "generate_file_queue.py")], env=env, check=True,
                           capture_output=True)
            embedded = peak_kb([sys.executable, str(ROOT / "ingestion" / "ingest_one_file.py")], env)
            # the same store served by `chroma run`: a second file ingested through it
            shutil.copy(transcript, tx / "b.txt")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = subprocess.Popen([str(Path(sys.executable).with_name("chroma")), "run", "--path", str(store),
                                       "--host", "127.0.0.1", "--port", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            env2 = {**base, "CHECKPOINT_DIR": str(work / f"ck2-{n}"), "CHROMA_HOST": "127.0.0.1",
                    "CHROMA_PORT": str(port)}
            subprocess.run([sys.executable, str(ROOT / "ingestion" / "generate_file_queue.py")], env=env2,
                           check=True, capture_output=True)
            client = peak_kb([sys.executable, str(ROOT / "ingestion" / "ingest_one_file.py"),
                              str(tx / "b.txt")], env2)
            server_kb = rss_kb(server.pid)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            rows.append((n, embedded, client, server_kb, fill_s))
            print(f"{n:,} vectors: embedded {embedded / 1024:.0f} MB; via server: client {client / 1024:.0f} MB, "
                  f"server {server_kb / 1024:.0f} MB (fill {fill_s:.0f} s)", flush=True)
    print("\n| vectors in the collection | embedded: ingesting process | server mode: ingesting process "
          "| server mode: chroma run |\n|---:|---:|---:|---:|")
    for n, e, c, s, _ in rows:
        print(f"| {n:,} | {e / 1024:.0f} MB | {c / 1024:.0f} MB | {s / 1024:.0f} MB |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
