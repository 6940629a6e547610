"""The operator's view: status, the dry-run estimate, logs, the query, --help and the README."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import API_KEY, ROOT, SAMPLE_TRANSCRIPT

from ingestion.common.settings import SETTINGS

SCRIPTS = ["generate_file_queue.py", "ingest_one_file.py", "process_queue_worker.py", "auto_chunker.py",
           "optimize_chromadb.py", "query_chromadb.py"]


def test_dry_run_estimate_matches_what_a_real_run_sends(project, api):
    project.add_real()
    project.add("sample.txt", SAMPLE_TRANSCRIPT)
    project.add("copy.txt", SAMPLE_TRANSCRIPT)  # a copy costs nothing: the estimate knows it
    dry = project.run("generate_file_queue.py", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (project.checkpoints / "file_queue.json").exists()
    estimate = int(re.search(r"([\d,]+) tokens to embed", dry.stdout).group(1).replace(",", ""))
    assert re.search(r"\$\d+\.\d+ at text-embedding-3-small prices", dry.stdout)
    assert api.stats()["requests"] == 0
    project.ingest_all()
    sent = api.stats()["tokens"]
    assert abs(estimate - sent) <= 0.02 * sent, (estimate, sent)


def test_status_reports_counts_tokens_cost_and_failures(project, api):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.add("b.txt", SAMPLE_TRANSCRIPT.replace("harbour", "airport"))
    project.add("empty.txt", "")
    project.add("bin.txt", b"\x00\x01binary")
    project.ingest_all()
    r = project.run("process_queue_worker.py", "--status")
    assert r.returncode == 0, r.stderr
    assert "queue: pending 0, processing 0, completed 2, failed 2" in r.stdout
    assert "failed x1: binary file" in r.stdout and "failed x1: empty" in r.stdout
    info = json.loads(project.run("process_queue_worker.py", "--status", "--json").stdout)
    assert info["queue"] == {"pending": 0, "processing": 0, "completed": 2, "failed": 2}
    assert info["tokens_embedded"] == api.stats()["tokens"]
    assert info["cost_usd"] == pytest.approx(api.stats()["tokens"] / 1e6 * 0.02)
    assert info["store"]["chunks"] == len(project.chunks())
    assert "throughput" in info and info["eta_hours"] == 0


def test_json_logs_one_line_per_file_without_the_key(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.ingest_all(LOG_FORMAT="json")
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    done = [x for x in lines if x.get("event") == "file_done"]
    assert len(done) == 1
    assert {"file", "chunks", "tokens", "seconds", "peak_rss_mb"} <= set(done[0])
    assert done[0]["peak_rss_mb"] > 0
    assert API_KEY not in r.stderr + r.stdout


def test_query_finds_the_chunk_that_answers(project, api):
    project.add("harbour.txt", SAMPLE_TRANSCRIPT)
    project.add("trains.txt", "DAVE: The night trains to the coast leave at nine from platform four.\n")
    project.ingest_all()
    project.run("optimize_chromadb.py")
    r = project.run("query_chromadb.py", "who pays for the dredging of the harbour", "-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits[0]["source"].endswith("harbour.txt") and "dredging" in hits[0]["text"]
    assert hits[0]["distance"] < hits[1]["distance"]
    text = project.run("query_chromadb.py", "night trains", "-k", "1").stdout
    assert "trains.txt" in text and "rag_strict" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_with_its_settings_and_exit_codes(project, script):
    r = project.run(script, "--help")
    assert r.returncode == 0, r.stderr
    assert "exit codes:" in r.stdout
    lines = dict(re.findall(r"^  ([A-Z][A-Z0-9_]+) (.*)$", r.stdout, re.M))
    assert lines, r.stdout
    for name, line in lines.items():
        default = next(s.default for s in SETTINGS if s.name == name)
        # on its own line: "(default: 1)" is somewhere in every help, whichever setting's it is
        assert line.endswith(f"(default: {default if default is not None else 'unset'})"), (name, line)


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| `?([^|`]*?)`? \|", readme, re.M))
    code = {s.name: s.default if s.default is not None else "unset" for s in SETTINGS}
    assert rows == code


# How the code reads a variable: settings.raw/_int/_bool/_choice("NAME"), os.environ.get("NAME"),
# os.getenv("NAME"), os.environ["NAME"]
_READERS = {"raw", "_int", "_bool", "_choice", "getenv"}


def _variables_read(folder: Path, only: str = "") -> set[str]:
    """Every environment variable named by a literal in a read of the code under folder (files naming only)."""
    names = set()
    for path in folder.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if only not in text:
            continue  # (most of the SDK's files: not parsed)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                environ_get = called == "get" and ast.unparse(f.value).endswith("environ")
                arg = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
                called, environ_get, arg = "", True, node.slice
            else:
                continue
            if (called in _READERS or environ_get) and isinstance(arg, ast.Constant) and \
                    isinstance(arg.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", arg.value):
                names.add(arg.value)
    return names


def test_every_setting_is_read_by_the_code_and_every_variable_it_reads_is_a_setting():
    # Every --help and the README's table come from SETTINGS, so they cannot tell a setting nothing reads:
    # the independent source is the code's own reads (and the OpenAI SDK's, for its variables).
    import importlib.util

    ours = _variables_read(ROOT / "ingestion")
    sdk_folder = Path(importlib.util.find_spec("openai").origin).parent
    sdk = {n for n in _variables_read(sdk_folder, only="OPENAI_") if n.startswith("OPENAI_")}
    declared = {s.name for s in SETTINGS}
    assert len(ours) >= 30, ours  # (a scan that finds nothing would make the next line pass for no reason)
    assert declared - ours - sdk == set(), "declared, but nothing reads them"
    assert ours - declared == {"PYTHONPATH", "PYTHONSAFEPATH"}, \
        "read, but not declared (PYTHONPATH, PYTHONSAFEPATH: set for the fork server)"


def _listed(project, script: str) -> set[str]:
    return set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", project.run(script, "--help").stdout, re.M))


def test_the_worker_help_lists_what_its_children_read(project):
    worker, child = _listed(project, "process_queue_worker.py"), _listed(project, "ingest_one_file.py")
    assert child <= worker, child - worker
    assert {"CHUNK_MAX_TOKENS", "EMBED_BATCH_SIZE", "MAX_ATTEMPTS", "TEXT_CLEANUP", "GRACE_SECONDS"} <= worker
    assert "MAX_ITERATIONS" not in _listed(project, "query_chromadb.py")


def test_readme_exit_codes_match_the_code(project):
    from ingestion.common.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\d+)` \| ([^|]+) \| ([^|]+) \| (yes|no) \|$", readme, re.M)
    assert rows == [(str(e.code), e.outcome, e.meaning, "yes" if e.run_stopped else "no") for e in EXIT_CODES]
    help_text = project.run("generate_file_queue.py", "--help").stdout
    for e in EXIT_CODES:
        assert f"  {e.code} {e.meaning}" in help_text
