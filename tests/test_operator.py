"""The operator's view: status, the dry-run estimate, logs, the query, --help and the README."""
from __future__ import annotations

import json
import re

import pytest

from conftest import API_KEY, ROOT, SAMPLE_TRANSCRIPT
from ingestion.settings import SETTINGS

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
    listed = re.findall(r"^  ([A-Z][A-Z0-9_]+) ", r.stdout, re.M)
    assert listed, r.stdout
    for name in listed:
        default = next(s.default for s in SETTINGS if s.name == name)
        assert f"(default: {default if default is not None else 'unset'})" in r.stdout


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| `?([^|`]*?)`? \|", readme, re.M))
    code = {s.name: s.default if s.default is not None else "unset" for s in SETTINGS}
    assert rows == code


def test_every_setting_is_read_by_some_script(project):
    helps = "".join(project.run(s, "--help").stdout for s in SCRIPTS)
    missing = [s.name for s in SETTINGS if s.name not in helps]
    assert missing == []


def _listed(project, script: str) -> set[str]:
    return set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", project.run(script, "--help").stdout, re.M))


def test_the_worker_help_lists_what_its_children_read(project):
    worker, child = _listed(project, "process_queue_worker.py"), _listed(project, "ingest_one_file.py")
    assert child <= worker, child - worker
    assert {"CHUNK_MAX_TOKENS", "EMBED_BATCH_SIZE", "MAX_ATTEMPTS", "TEXT_CLEANUP", "GRACE_SECONDS"} <= worker
    assert "MAX_ITERATIONS" not in _listed(project, "query_chromadb.py")


def test_readme_exit_codes_match_the_code(project):
    from ingestion.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\d+)` \| ([^|]+) \| ([^|]+) \| (yes|no) \|$", readme, re.M)
    assert rows == [(str(e.code), e.outcome, e.meaning, "yes" if e.run_stopped else "no") for e in EXIT_CODES]
    help_text = project.run("generate_file_queue.py", "--help").stdout
    for e in EXIT_CODES:
        assert f"  {e.code} {e.meaning}" in help_text
