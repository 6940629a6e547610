#!/usr/bin/env python3
"""Benchmark: this project's pipeline against LangChain and LlamaIndex, same corpus, same server.

    python3 bench/run_bench.py --files 200 --latency-ms 200

What it does (see bench/README.md for the columns):
1. builds the corpus (bench/make_corpus.py; reused when it already exists);
2. makes the peers' venvs (bench/work/venv-langchain, bench/work/venv-llamaindex)
   from bench/peers/requirements-*.txt when missing;
3. starts the local OpenAI-compatible server (local_openai/) with the latency,
   rate-limit and fault options given;
4. --repeat times, for each contender, into a fresh Chroma directory: a first
   run (server stats reset before it), then a second run on the already ingested
   corpus (same store and checkpoint, as a user would run it again), then opens
   the store and counts what is in it;
5. a zero-latency pass (each contender once more, server latency set to 0,
   rate limits and faults off) and the floor (bench/floor.py);
6. writes a section of bench/RESULTS.md (replacing one with the same --label)
   and the raw numbers to bench/results/LABEL.json.

Every contender runs as subprocesses (bench/measure.py around them), one at a
time. Needs the project's Python (chromadb, tiktoken): when started with
another one it re-runs itself with --project-python.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
PEERS = BENCH / "peers"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_DIR = BENCH / "results"
# the project's own venv (made by ./run_tests.sh), else the one these numbers were taken with
DEFAULT_PROJECT_PYTHON = next((p for p in (str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"),
                               "/tmp/venv/bin/python") if os.path.exists(p)), "/tmp/venv/bin/python")
CONTENDERS = ("project", "langchain", "llamaindex")
TITLES = {"project": "this project", "langchain": "LangChain", "llamaindex": "LlamaIndex"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200, help="transcripts in the corpus (default 200)")
    ap.add_argument("--size-kb", type=float, default=60, help="size of each transcript (default 60 KB, ~1 hour)")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    ap.add_argument("--corpus", type=Path, help="use this folder of .txt files instead of building one")
    ap.add_argument("--latency-ms", type=float, default=200, help="server base latency per request (default 200)")
    ap.add_argument("--latency-per-1k-ms", type=float, default=20,
                    help="server extra latency per 1000 input tokens (default 20)")
    ap.add_argument("--tpm", type=int, default=0, help="server tokens-per-minute limit (default 0: none)")
    ap.add_argument("--rpm", type=int, default=0, help="server requests-per-minute limit (default 0: none)")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="fraction of requests answered 500/503")
    ap.add_argument("--ratelimit-headers", default="all", choices=["all", "limit-tokens", "remaining", "none"],
                    help="which x-ratelimit-* headers the server sends (default all six, as OpenAI does)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender; medians are reported (default 3)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help="comma-separated subset of project,langchain,llamaindex")
    ap.add_argument("--with-generate", action="store_true",
                    help="run generate_file_queue.py before the project's worker (default: the worker alone, "
                         "which builds the queue itself, as the cron job in render.yaml runs it)")
    ap.add_argument("--no-rerun", action="store_true", help="skip the second (already ingested) run")
    ap.add_argument("--rerun-repeats", type=int, default=1,
                    help="do the second run in the first N repeats only (default 1; it does not vary much)")
    ap.add_argument("--no-zero", action="store_true", help="skip the zero-latency pass")
    ap.add_argument("--zero-files", type=int, default=0,
                    help="run the zero-latency pass on the first N files only (default 0: all); its per-file "
                         "and per-chunk columns stay comparable")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    ap.add_argument("--langchain-check-ctx", default="true", choices=["true", "false"],
                    help="OpenAIEmbeddings(check_embedding_ctx_length=...) (default true, LangChain's default)")
    ap.add_argument("--llamaindex-files-per-run", type=int, default=20,
                    help="LlamaIndex: pipeline.run on slices of N documents (default 20; 0 = the whole corpus "
                         "at once, which fails past ~5,461 nodes with chromadb 1.5.9: see peers/llamaindex_ingest.py)")
    ap.add_argument("--label", help="name of this run's section in RESULTS.md (default: from the options)")
    ap.add_argument("--title", help="heading text of that section")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md / results/")
    ap.add_argument("--keep", action="store_true", help="keep the Chroma directories of every run")
    ap.add_argument("--project-python", default=os.environ.get("BENCH_PROJECT_PYTHON") or (
        DEFAULT_PROJECT_PYTHON if os.path.exists(DEFAULT_PROJECT_PYTHON) else sys.executable),
        help="Python with the project's requirements (default: the project's .venv when present)")
    ap.add_argument("--peer-base-python", default=shutil.which("python3") or sys.executable,
                    help="Python used to create the peers' venvs (default: python3 on PATH)")
    args = ap.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = set(args.contenders) - set(CONTENDERS)
    if bad or "project" not in args.contenders:
        ap.error(f"--contenders: choose from {CONTENDERS} and keep 'project' (ratios are to it)")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not args.label:
        args.label = f"files{args.files}-lat{args.latency_ms:g}" + (f"-tpm{args.tpm}" if args.tpm else "") + (
            f"-fault{args.fault_rate:g}" if args.fault_rate else "") + (
            f"-headers-{args.ratelimit_headers}" if args.ratelimit_headers != "all" else "")
    return args


def reexec_with_project_python(args) -> None:
    """The server and the floor need tiktoken/chromadb: run under the project's Python."""
    try:
        import chromadb  # noqa: F401
        import tiktoken  # noqa: F401
        return
    except ImportError:
        pass
    py = args.project_python
    if not py or os.environ.get("BENCH_REEXEC") or not os.path.exists(py):
        sys.exit(f"this benchmark needs the project's Python (chromadb, tiktoken); pass --project-python "
                 f"(tried {py!r})")
    os.environ["BENCH_REEXEC"] = "1"  # never loop
    os.environ["BENCH_ORIGINAL_ARGV"] = shlex.join(["python3"] + sys.argv)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def ensure_tiktoken_cache() -> None:
    """Offline, tiktoken needs a seeded cache: the project's (./run_tests.sh seeds it), else /tmp/tkcache."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return
    for cache in (Path(__file__).resolve().parent.parent / ".cache" / "tiktoken", Path("/tmp/tkcache")):
        if cache.is_dir():
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
            return


def ensure_venv(name: str, base_python: str) -> str:
    """bench/work/venv-NAME with bench/peers/requirements-NAME.txt installed; returns its python."""
    req = PEERS / f"requirements-{name}.txt"
    venv = WORK / f"venv-{name}"
    py = venv / "bin" / "python"
    stamp = venv / ".bench-requirements.sha256"
    want = hashlib.sha256(req.read_bytes()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return str(py)
    log(f"installing the {name} venv ({venv}) from {req.name}")
    if not py.exists():
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(want + "\n")
    return str(py)


def ensure_corpus(args) -> Path:
    if args.corpus:
        return args.corpus.resolve()
    sys.path.insert(0, str(BENCH))
    import make_corpus

    out = WORK / f"corpus-f{args.files}-s{args.size_kb:g}kb-seed{args.seed}"
    stamp = out / ".complete"
    if not stamp.exists():
        log(f"building the corpus: {args.files} files of {args.size_kb:g} KB, seed {args.seed} -> {out}")
        if out.exists():
            shutil.rmtree(out)
        paths = make_corpus.make_files(out, args.files, args.size_kb, args.seed)
        stamp.write_text(make_corpus.digest(paths) + "\n")
    return out


def subset(corpus: Path, files: list[Path], n: int) -> Path:
    """The first n files of the corpus, copied to a folder of their own (all of it when n is 0)."""
    if not n or n >= len(files):
        return corpus
    out = WORK / f"{corpus.name}-first{n}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in files[:n]:
        shutil.copy2(p, out / p.name)
    return out


SET_BY_BENCH = {"TRANSCRIPTS_DIR", "CHECKPOINT_DIR", "CHROMA_PATH", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                "CHUNK_MAX_TOKENS", "CHUNK_OVERLAP_TOKENS", "MAX_ITERATIONS"}


def project_env() -> dict[str, str]:
    """The project's settings found in this environment: they reach its commands (e.g. FILES_PER_CHILD)."""
    try:
        from ingestion.common.settings import SETTINGS
        names = {s.name for s in SETTINGS}
    except Exception:
        return {}
    return {k: os.environ[k] for k in sorted(names - SET_BY_BENCH) if os.environ.get(k)
            and "KEY" not in k and "TOKEN" not in k}


def pip_versions(py: str, names: list[str]) -> dict[str, str]:
    code = ("import json,sys\nfrom importlib.metadata import version\nout={}\n"
            "for n in sys.argv[1:]:\n  try: out[n]=version(n)\n  except Exception: out[n]='-'\n"
            "print(json.dumps(out))")
    try:
        return json.loads(subprocess.run([py, "-c", code, *names], capture_output=True, text=True,
                                         check=True).stdout)
    except Exception:
        return {n: "?" for n in names}


def machine_facts(pythons: dict[str, str]) -> dict:
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
             "python": platform.python_version()}
    facts["versions"] = {
        "project": pip_versions(pythons["project"], ["openai", "chromadb", "tiktoken"]),
        "langchain": pip_versions(pythons["langchain"], ["langchain-text-splitters", "langchain-openai",
                                                        "langchain-chroma", "langchain-core", "openai",
                                                        "chromadb", "tiktoken"]) if "langchain" in pythons else {},
        "llamaindex": pip_versions(pythons["llamaindex"], ["llama-index-core", "llama-index-embeddings-openai",
                                                          "llama-index-vector-stores-chroma", "openai", "chromadb",
                                                          "tiktoken"]) if "llamaindex" in pythons else {},
    }
    try:
        facts["project_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                 capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ingestion"],
                               capture_output=True, text=True).stdout.strip()
        facts["project_tree"] = "ingestion/ has uncommitted changes" if dirty else "clean"
    except OSError:
        pass
    return facts


# ---------------------------------------------------------------------------
# one contender run
# ---------------------------------------------------------------------------


def steps_for(name: str, corpus: Path, run_dir: Path, server, pythons: dict, args, tag: str) -> list[dict]:
    chroma = run_dir / "chroma"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if name == "project":
        env = {"TRANSCRIPTS_DIR": str(corpus), "CHECKPOINT_DIR": str(run_dir / "checkpoints"),
               "CHROMA_PATH": str(chroma), "OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url,
               "CHUNK_MAX_TOKENS": "500", "CHUNK_OVERLAP_TOKENS": "50"}
        py = pythons["project"]
        generate = [{"name": "generate_file_queue", "argv": [py, str(ROOT / "ingestion" / "generate_file_queue.py")],
                     "env": env, "cwd": str(run_dir), "log": str(logs / f"{tag}-generate")}]
        return (generate if args.with_generate else []) + [
            {"name": "process_queue_worker", "argv": [py, str(ROOT / "ingestion" / "process_queue_worker.py")],
             "env": dict(env, MAX_ITERATIONS="0"), "cwd": str(run_dir), "log": str(logs / f"{tag}-worker")},
        ]
    script = PEERS / f"{name}_ingest.py"
    argv = [pythons[name], str(script), str(corpus), str(chroma), server.base_url, server.api_key]
    if name == "langchain":
        argv += ["--check-ctx", args.langchain_check_ctx]
    if name == "llamaindex":
        argv += ["--files-per-run", str(args.llamaindex_files_per_run)]
    return [{"name": name, "argv": argv, "cwd": str(run_dir), "log": str(logs / f"{tag}-{name}")}]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def proc_cpu_s(pid: int | None) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


def measure(steps: list[dict], run_dir: Path, tag: str, server=None) -> dict:
    spec = run_dir / f"{tag}-spec.json"
    out = run_dir / f"{tag}-measure.json"
    spec.write_text(json.dumps({"steps": steps, "sample_ms": 50}))
    server_pid = server.proc.pid if server is not None and server.proc is not None else None
    busy0, srv0, load0 = busy_cpu_s(), proc_cpu_s(server_pid), os.getloadavg()[0]
    subprocess.run([sys.executable, str(BENCH / "measure.py"), str(spec), str(out)], check=True)
    busy1, srv1 = busy_cpu_s(), proc_cpu_s(server_pid)
    result = json.loads(out.read_text())
    result["server_cpu_s"] = srv1 - srv0
    own = result["cpu_user_s"] + result["cpu_sys_s"] + result.get("measure_cpu_s", 0)
    result["other_cpu_s"] = max(0.0, (busy1 - busy0) - own - (srv1 - srv0))
    result["loadavg_before"] = load0
    if result["rc"] != 0:
        failed = result["steps"][-1]
        for s in steps:
            if s["name"] == failed["name"] and s.get("log"):
                try:
                    err = Path(s["log"] + ".err").read_text(errors="replace")
                    result["error_tail"] = "\n".join(err.strip().splitlines()[-12:])
                except OSError:
                    pass
    return result


def count_store(py: str, chroma: Path) -> dict:
    if not chroma.exists():
        return {"chunks": 0, "collections": {}}
    r = subprocess.run([py, str(PEERS / "count_store.py"), str(chroma)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(r.stdout)


def server_delta(stats: dict) -> dict:
    sc = stats.get("status_counts", {})
    return {"requests": stats["requests"], "ok_requests": stats["ok_requests"], "tokens": stats["tokens"],
            "inputs": stats["inputs"], "r429": sc.get("429", 0),
            "errors": {k: v for k, v in sc.items() if k not in ("200", "429")},
            "max_concurrent": stats["max_concurrent"], "connection_resets": stats.get("connection_resets", 0)}


def run_contender(name, corpus, run_dir, server, pythons, args, rerun: bool) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    py = pythons[name]
    out = {}
    server.reset()
    first = measure(steps_for(name, corpus, run_dir, server, pythons, args, "run1"), run_dir, "run1", server)
    first["server"] = server_delta(server.stats())
    first["store"] = count_store(py, run_dir / "chroma")
    out["first"] = first
    log(f"  {name}: {first['wall_s']:.1f}s rc={first['rc']} requests={first['server']['requests']} "
        f"tokens={first['server']['tokens']} 429={first['server']['r429']} "
        f"chunks={first['store'].get('chunks')} rss={first['rusage_max_rss_mb']:.0f}MB")
    if rerun:
        server.reset()
        second = measure(steps_for(name, corpus, run_dir, server, pythons, args, "run2"), run_dir, "run2", server)
        second["server"] = server_delta(server.stats())
        second["store"] = count_store(py, run_dir / "chroma")
        out["rerun"] = second
        log(f"  {name} re-run: {second['wall_s']:.1f}s rc={second['rc']} "
            f"requests={second['server']['requests']} tokens={second['server']['tokens']} "
            f"chunks after={second['store'].get('chunks')} duplicates={second['store'].get('duplicates')}")
    if not args.keep:
        shutil.rmtree(run_dir / "chroma", ignore_errors=True)
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def summarize(runs: list[dict], key: str) -> dict:
    """Medians over repeats of one contender's `first` (or `rerun`) results."""
    rs = [r[key] for r in runs if key in r]
    if not rs:
        return {}
    get = lambda f: med([f(r) for r in rs])  # noqa: E731
    return {
        "n": len(rs),
        "wall_s": get(lambda r: r["wall_s"]),
        "wall_all": [round(r["wall_s"], 1) for r in rs],
        "rss_mb": get(lambda r: r["rusage_max_rss_mb"]),
        "rss_proc_sampled_mb": get(lambda r: r["sampled_max_proc_mb"]),
        "rss_tree_mb": get(lambda r: r["sampled_max_tree_mb"]),
        "rss_cmd": rs[0].get("sampled_max_proc_cmd", ""),
        "cpu_s": get(lambda r: r["cpu_user_s"] + r["cpu_sys_s"]),
        "other_cpu_s": get(lambda r: r.get("other_cpu_s")),
        "server_cpu_s": get(lambda r: r.get("server_cpu_s")),
        "requests": get(lambda r: r["server"]["requests"]),
        "ok_requests": get(lambda r: r["server"]["ok_requests"]),
        "tokens": get(lambda r: r["server"]["tokens"]),
        "inputs": get(lambda r: r["server"]["inputs"]),
        "r429": get(lambda r: r["server"]["r429"]),
        "errors": rs[0]["server"]["errors"],
        "max_concurrent": get(lambda r: r["server"]["max_concurrent"]),
        "chunks": get(lambda r: r["store"].get("chunks")),
        "distinct": get(lambda r: r["store"].get("distinct")),
        "duplicates": get(lambda r: r["store"].get("duplicates")),
        "tokens_mean": get(lambda r: r["store"].get("tokens_mean")),
        "tokens_max": get(lambda r: r["store"].get("tokens_max")),
        "over_limit": get(lambda r: r["store"].get("over_limit")),
        "rc": [r["rc"] for r in rs],
        "error_tail": next((r.get("error_tail") for r in rs if r.get("error_tail")), None),
    }


def render(report: dict) -> str:
    a, f, c = report["args"], report["facts"], report["corpus"]
    names = [n for n in CONTENDERS if n in report["summary"]]
    S = report["summary"]
    P = S["project"]["first"]
    lines = [f"<!-- bench:{a['label']} -->",
             f"## {a.get('title') or a['label']}", "",
             f"Command: `{report['command']}`  ",
             f"Date: {f['date']}; machine: {f['nproc']} CPUs ({f['cpu']}), {f['memory']} RAM, Linux {f['kernel']}, "
             f"Python {f['python']}; project commit {f.get('project_commit', '?')} ({f.get('project_tree', '?')}).  ",
             "Versions: " + "; ".join(
                 f"{TITLES[k]}: " + ", ".join(f"{n} {v}" for n, v in vs.items())
                 for k, vs in f["versions"].items() if vs) + ".  ",
             ("Project commands: generate_file_queue.py, then the worker.  " if a.get("with_generate") else
              "Project command: process_queue_worker.py alone (it builds the queue), as the cron job runs it.  "),
             "Project settings taken from the environment: " + (", ".join(
                 f"{k}={v}" for k, v in f.get("project_env", {}).items()) or "none (its defaults)") + ".  ",
             f"Corpus: {c['files']} files, {c['bytes'] / 2**20:.2f} MiB, {c['tokens']:,} tokens (cl100k_base), "
             f"`{c['path']}`.  ",
             f"Server: latency {a['latency_ms']:g} ms + {a['latency_per_1k_ms']:g} ms per 1k tokens, "
             f"tpm {a['tpm'] or 'unlimited'}, rpm {a['rpm'] or 'unlimited'}, fault rate {a['fault_rate']:g}, "
             f"rate-limit headers: {a.get('ratelimit_headers', 'all')}. "
             f"Repeats: {a['repeat']} (numbers are medians; wall times of each repeat in the raw JSON "
             f"`bench/results/{a['label']}.json`). LangChain check_embedding_ctx_length={a['langchain_check_ctx']}; "
             f"LlamaIndex pipeline.run on slices of {a.get('llamaindex_files_per_run') or 'all'} files. "
             f"'other CPU s': CPU time used meanwhile by processes that are neither the contender nor the "
             f"embeddings server (other work on the machine; 0 = undisturbed).",
             "", "### First run (empty store)", "",
             "| contender | wall s | time vs project | peak RSS MB (largest process) | RSS vs project | "
             "peak RSS MB (whole tree) | requests | tokens sent | tokens vs project | 429s | other errors | "
             "max in flight | chunks stored | distinct | tokens/chunk mean / max | CPU s | other CPU s | exit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for n in names:
        s = S[n]["first"]
        errs = ", ".join(f"{k}: {v}" for k, v in (s["errors"] or {}).items()) or "0"
        lines.append(
            f"| {TITLES[n]} | {fmt(s['wall_s'])} | {ratio(s['wall_s'], P['wall_s'])} | {fmt(s['rss_mb'], 0)} | "
            f"{ratio(s['rss_mb'], P['rss_mb'])} | {fmt(s['rss_tree_mb'], 0)} | {fmt(s['requests'])} | "
            f"{fmt(s['tokens'])} | {ratio(s['tokens'], P['tokens'])} | {fmt(s['r429'])} | {errs} | "
            f"{fmt(s['max_concurrent'])} | {fmt(s['chunks'])} | {fmt(s['distinct'])} | "
            f"{fmt(s['tokens_mean'])} / {fmt(s['tokens_max'])} | {fmt(s['cpu_s'])} | {fmt(s['other_cpu_s'])} | "
            f"{','.join(map(str, s['rc']))} |")
    if a["tpm"]:
        lines += ["", f"Under the {a['tpm']:,} tokens/minute limit (the server's 60 s window starts empty, so the "
                  "first minute can take up to a full window at once; 'ideal' is the least time the limit "
                  "allows for the tokens actually sent: (tokens − limit) / limit minutes):", "",
                  "| contender | tokens sent | wall s | sustained tokens/min | % of limit | ideal s | ideal / wall | "
                  "429s | requests |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in names:
            s = S[n]["first"]
            if not s.get("wall_s"):
                continue
            tpm = s["tokens"] / s["wall_s"] * 60
            ideal = max(0.0, (s["tokens"] - a["tpm"]) / a["tpm"] * 60)
            lines.append(f"| {TITLES[n]} | {fmt(s['tokens'])} | {fmt(s['wall_s'])} | {fmt(tpm, 0)} | "
                         f"{100 * tpm / a['tpm']:.0f}% | {fmt(ideal)} | {100 * ideal / s['wall_s']:.0f}% | "
                         f"{fmt(s['r429'])} | {fmt(s['requests'])} |")
    if any("rerun" in S[n] and S[n]["rerun"] for n in names):
        lines += ["", "### Second run on the already ingested corpus (same store, same command again)", "",
                  "| contender | wall s | requests | tokens sent | chunks stored after | duplicates in store | exit |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for n in names:
            s = S[n].get("rerun")
            if not s:
                continue
            lines.append(f"| {TITLES[n]} | {fmt(s['wall_s'])} | {fmt(s['requests'])} | {fmt(s['tokens'])} | "
                         f"{fmt(s['chunks'])} | {fmt(s['duplicates'])} | {','.join(map(str, s['rc']))} |")
    Z = report.get("zero") or {}
    if Z:
        pz = Z.get("project", {}).get("wall_s")
        zf = next(iter(Z.values())).get("files", c["files"])
        lines += ["", f"### Pipeline overhead at zero latency (server latency 0, no limits, one run each, "
                  f"{'the first ' if zf < c['files'] else ''}{zf} files)", "",
                  "| contender | wall s | vs project | per file ms | per chunk ms | CPU s (user+sys, all processes) | "
                  "other CPU s | peak RSS MB | requests | exit |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n in names:
            z = Z.get(n)
            if not z:
                continue
            chunks = z["store"].get("chunks") or 0
            lines.append(
                f"| {TITLES[n]} | {fmt(z['wall_s'])} | {ratio(z['wall_s'], pz)} | "
                f"{fmt(1000 * z['wall_s'] / z.get('files', c['files']), 0)} | "
                f"{fmt(1000 * z['wall_s'] / chunks, 2) if chunks else '–'} | "
                f"{fmt(z['cpu_user_s'] + z['cpu_sys_s'])} | {fmt(z.get('other_cpu_s'))} | "
                f"{fmt(z['rusage_max_rss_mb'], 0)} | "
                f"{fmt(z['server']['requests'])} | {z['rc']} |")
    fl = report.get("floor")
    if fl:
        lines += ["", "### Floor (the least work on this corpus, same machine, same run)", "",
                  "| step | seconds |", "|---|---:|",
                  f"| read {fl['files']} files ({fl['bytes'] / 2**20:.1f} MiB) | {fl['read_s']:.2f} |",
                  f"| tiktoken cl100k_base over all text ({fl['tokens']:,} tokens) | {fl['tokenize_s']:.2f} |",
                  f"| write {fl['windows']:,} random 1536-d vectors + texts to Chroma, batches of "
                  f"{fl['chroma_batch']} | {fl['chroma_write_s']:.2f} |",
                  f"| **floor** (read + tokenize + write) | **{fl['floor_s']:.2f}** |"]
        if "server_embed_s" in fl:
            lines.append(f"| (not in the floor) the local server embedding those {fl['windows']:,} windows at "
                         f"zero latency, 100 a request, sequential | {fl['server_embed_s']:.2f} |")
    notes = report.get("notes") or []
    fails = [(n, S[n][k]) for n in names for k in ("first", "rerun") if S[n].get(k) and S[n][k].get("error_tail")]
    if fails or notes:
        lines += ["", "Notes:"]
        lines += [f"- {x}" for x in notes]
        for n, s in fails:
            tail = s["error_tail"].strip().splitlines()[-1][:300]
            lines.append(f"- {TITLES[n]} exited {s['rc']}: `{tail}`")
    lines += [f"<!-- /bench:{a['label']} -->", ""]
    return "\n".join(lines)


RESULTS_HEADER = """# Benchmark results

Produced by `bench/run_bench.py` (how to run it and what each column means: `bench/README.md`).
Each section below is one invocation; the exact command is in it. Raw numbers: `bench/results/*.json`.

"""


def write_markdown(section: str, label: str) -> None:
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else RESULTS_HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(label)} -->.*?<!-- /bench:{re.escape(label)} -->\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_tiktoken_cache()
    reexec_with_project_python(args)
    sys.path.insert(0, str(ROOT))
    from local_openai.testing import LocalServer

    command = os.environ.pop("BENCH_ORIGINAL_ARGV", None) or shlex.join(["python3"] + sys.argv)
    pythons = {"project": args.project_python if os.path.exists(args.project_python) else sys.executable}
    for name in args.contenders:
        if name != "project":
            pythons[name] = ensure_venv(name, args.peer_base_python)
    corpus = ensure_corpus(args)
    files = sorted(corpus.rglob("*.txt"))
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    corpus_info = {"path": os.path.relpath(corpus, ROOT) if corpus.is_relative_to(ROOT) else str(corpus),
                   "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                   "tokens": sum(len(enc.encode_ordinary(p.read_text(encoding="utf-8", errors="replace")))
                                 for p in files)}
    log(f"corpus: {corpus_info['files']} files, {corpus_info['bytes'] / 2**20:.2f} MiB, "
        f"{corpus_info['tokens']:,} tokens")
    facts = machine_facts(pythons)
    facts["project_env"] = project_env()
    runs_root = WORK / "runs" / args.label
    server_opts = dict(latency_ms=args.latency_ms, latency_per_1k_ms=args.latency_per_1k_ms, tpm=args.tpm or None,
                       rpm=args.rpm or None, fault_rate=args.fault_rate or None,
                       ratelimit_headers=None if args.ratelimit_headers == "all" else args.ratelimit_headers)
    raw = {n: [] for n in args.contenders}
    zero, floor = {}, None
    started = time.monotonic()
    with LocalServer(**server_opts) as server:
        log(f"server at {server.base_url} with {server_opts}")
        for rep in range(args.repeat):
            for name in args.contenders:
                log(f"repeat {rep + 1}/{args.repeat}: {name}")
                rerun = not args.no_rerun and rep < args.rerun_repeats
                raw[name].append(run_contender(name, corpus, runs_root / f"{name}-rep{rep + 1}", server, pythons,
                                               args, rerun))
        if not args.no_zero:
            server.set_faults(latency_ms=0, latency_per_1k_tokens_ms=0, fault_rate=0, tpm=0, rpm=0)
            zero_corpus = subset(corpus, files, args.zero_files)
            zero_files = len(list(zero_corpus.rglob("*.txt")))
            for name in args.contenders:
                log(f"zero latency ({zero_files} files): {name}")
                zero[name] = run_contender(name, zero_corpus, runs_root / f"{name}-zero", server, pythons, args,
                                           rerun=False)["first"]
                zero[name]["files"] = zero_files
        if not args.no_floor:
            server.set_faults(latency_ms=0, latency_per_1k_tokens_ms=0, fault_rate=0, tpm=0, rpm=0)
            server.reset()
            log("floor")
            floor_dir = runs_root / "floor"
            shutil.rmtree(floor_dir, ignore_errors=True)
            r = subprocess.run([pythons["project"], str(BENCH / "floor.py"), str(corpus), str(floor_dir / "chroma"),
                                "--base-url", server.base_url, "--api-key", server.api_key],
                               capture_output=True, text=True)
            if r.returncode == 0:
                floor = json.loads(r.stdout)
            else:
                log("floor failed: " + r.stderr[-500:])
            shutil.rmtree(floor_dir, ignore_errors=True)
    summary = {n: {"first": summarize(raw[n], "first"), "rerun": summarize(raw[n], "rerun")} for n in raw}
    report = {"command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "facts": facts, "corpus": corpus_info, "summary": summary, "raw": raw, "zero": zero, "floor": floor,
              "total_s": time.monotonic() - started}
    section = render(report)
    print(section)
    if not args.no_write:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"{args.label}.json").write_text(json.dumps(report, indent=1, default=str))
        write_markdown(section, args.label)
        log(f"wrote {RESULTS_MD} (section {args.label}) and {RESULTS_DIR / (args.label + '.json')}")
    log(f"total {report['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
