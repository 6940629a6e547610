"""Settings that cannot work stop the run with one line saying which setting and what to check:
a `.env` is read whole or not at all (a malformed one stops every script before anything is
claimed or paid); an embeddings API that does not answer is named with the setting that gave
its address."""
from __future__ import annotations

import socket

import pytest
from conftest import SAMPLE_TRANSCRIPT

SCRIPTS = [("generate_file_queue.py",), ("ingest_one_file.py",), ("process_queue_worker.py", "--max-iterations", "0"),
           ("auto_chunker.py", "PATH"), ("optimize_chromadb.py",), ("query_chromadb.py", "harbour")]
# The file: an unclosed quote on line 1, a line without '=' on line 2.
MALFORMED = 'CHUNK_MAX_TOKENS="400\nFILE_CONCURRENCY 2\n'


def one_error_line(result) -> str:
    """The single line a refused run printed on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def queued_project(project):
    """A project with a file queued and one stored: a run could claim, pay and stamp."""
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    project.add("b.txt", SAMPLE_TRANSCRIPT.replace("harbour", "airport"))
    assert project.run("generate_file_queue.py").returncode == 0
    assert project.run("ingest_one_file.py").returncode == 0
    project.api.reset()
    return project


def test_a_malformed_env_stops_every_script_before_anything_is_claimed_or_paid(project, api):
    queued_project(project)
    stored = project.chunks()
    state = {p.name: p.read_bytes() for p in project.checkpoints.rglob("*") if p.is_file()}
    env_file = project.root / ".env"
    env_file.write_text(MALFORMED)
    for script, *args in SCRIPTS:
        args = [str(project.transcripts / "b.txt") if a == "PATH" else a for a in args]
        r = project.run(script, *args)
        assert r.returncode == 2, (script, r.stdout, r.stderr)
        line = one_error_line(r)
        assert f"{env_file}, line 1 (CHUNK_MAX_TOKENS)" in line and "quote" in line, line
        assert "python-dotenv" not in r.stderr and r.stdout == ""
        assert project.run(script, "--help").returncode == 0, script  # --help still works
    assert api.stats()["requests"] == 0 and api.stats()["model_requests"] == 0
    assert {p.name: p.read_bytes() for p in project.checkpoints.rglob("*") if p.is_file()} == state
    assert project.chunks() == stored
    # fixed: the run goes on, with the file's settings (the store's record would refuse another cut)
    env_file.write_text('CHUNK_MAX_TOKENS="500"\nFILE_CONCURRENCY=2\n')
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0, r.stderr
    assert project.queue["pending"] == [] and len(project.queue["completed"]) == 2


@pytest.mark.parametrize("content, line, says", [
    ("A=1\nB='unclosed\n", 2, "quote"),
    ('CHUNK_MAX_TOKENS="400" tokens\n', 1, "quote"),           # text after the closing quote
    ("# comment\n\n\nFILE_CONCURRENCY 2\n", 4, "no '='"),      # blank lines before it counted
    ("A=1\r\n\r\nFILE_CONCURRENCY\r\n", 3, "no '='"),          # a name alone sets nothing
    ("A=1\n}}} not a setting {{{\n", 2, "no '='"),
    ("export\n", 1, "no '='"),
    ("export 'CHUNK_MAX_TOKENS=400\n", 1, "not a NAME=value line"),
    ("=400\n", 1, "not a NAME=value line"),
])
def test_each_kind_of_unreadable_env_line_is_named(project, api, content, line, says):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    (project.root / ".env").write_text(content, newline="")
    r = project.run("ingest_one_file.py")
    assert r.returncode == 2
    error = one_error_line(r)
    assert f"{project.root / '.env'}, line {line}" in error and says in error, error
    assert "python-dotenv" not in r.stderr
    assert not project.checkpoints.exists() and api.stats()["requests"] == 0


def test_an_env_that_is_not_utf8_is_named(project, api):
    (project.root / ".env").write_bytes(b"CHROMA_COLLECTION=notes\nTEXT_CLEANUP=caf\xe9\n")
    r = project.run("generate_file_queue.py")
    assert r.returncode == 2
    assert f"{project.root / '.env'}, line 2: not UTF-8" in one_error_line(r)
    assert not project.checkpoints.exists()


def test_a_valid_env_in_every_form_is_read(project, api):
    folder = project.root / "tr#1"  # a '#' inside a quoted value is part of it
    folder.mkdir()
    (folder / "a.txt").write_text(SAMPLE_TRANSCRIPT)
    (project.root / ".env").write_text(
        "# settings\n"
        "export CHUNK_MAX_TOKENS=400\n"
        "\n"
        f'TRANSCRIPTS_DIR="{folder}"   # a comment after a quoted value\n'
        "CHROMA_COLLECTION='meeting-notes' # and after a single-quoted one\n"
        'NOTE="a value\n'
        'over two lines"\n'
        "EMPTY= # nothing\n"
        "CHUNK_OVERLAP_TOKENS = 40\n")
    unset = {"TRANSCRIPTS_DIR": "<unset>"}  # the environment would win over .env
    gen = project.run("generate_file_queue.py", **unset)
    assert gen.returncode == 0, gen.stderr
    r = project.run("ingest_one_file.py", **unset)
    assert r.returncode == 0, r.stderr
    assert "python-dotenv" not in gen.stderr + r.stderr
    assert project.queue["completed"] == [str(folder / "a.txt")]
    record = collection_metadata(project, "meeting-notes")
    assert record["chunk_max_tokens"] == 400 and record["chunk_overlap_tokens"] == 40


def collection_metadata(project, name: str) -> dict:
    """The record a collection was stamped with."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    try:
        return chromadb.PersistentClient(path=str(project.chroma)).get_collection(name).metadata
    finally:
        SharedSystemClient.clear_system_cache()


# ---- the embeddings API's address -------------------------------------------------------------
def test_an_unreachable_api_is_named_with_its_setting_and_what_to_check(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    r = project.run("ingest_one_file.py", OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_MAX_RETRIES="0")
    assert r.returncode == 4
    error = one_error_line(r)
    assert "could not be reached at http://127.0.0.1:9/v1/ (OPENAI_BASE_URL)" in error, error
    assert "a server is running there" in error and "proxy" in error and "nothing was claimed" in error
    # unset: OpenAI's own address, here behind a proxy that is down
    r = project.run("ingest_one_file.py", OPENAI_BASE_URL="<unset>", HTTPS_PROXY="http://127.0.0.1:9",
                    OPENAI_MAX_RETRIES="0")
    assert r.returncode == 4
    error = one_error_line(r)
    assert "at https://api.openai.com/v1/ (OpenAI's own: OPENAI_BASE_URL is unset)" in error, error
    assert "proxy (HTTPS_PROXY)" in error
    # set but empty (`OPENAI_BASE_URL=` in .env): the SDK is left with no address at all
    r = project.run("ingest_one_file.py", OPENAI_BASE_URL="", OPENAI_MAX_RETRIES="0")
    assert r.returncode == 4
    assert "OPENAI_BASE_URL is set but empty" in one_error_line(r)
    assert not project.checkpoints.joinpath("file_queue.json").exists()


def test_an_api_that_never_answers_is_named_with_its_timeout(project):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    with socket.socket() as silent:  # connections are accepted (backlog), never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        r = project.run("ingest_one_file.py", OPENAI_BASE_URL=url, OPENAI_TIMEOUT="1", timeout=60)
    assert r.returncode == 4
    error = one_error_line(r)
    assert f"timed out (OPENAI_TIMEOUT=1s) at {url}/ (OPENAI_BASE_URL)" in error, error
    assert "raise OPENAI_TIMEOUT" in error


def test_a_connection_lost_while_embedding_names_the_address(project, api):
    project.add("a.txt", SAMPLE_TRANSCRIPT)
    api.set_faults(fail_next=[{"action": "reset"}])
    r = project.run("ingest_one_file.py", OPENAI_MAX_RETRIES="0")
    assert r.returncode == 4
    why = project.queue["files"][str(project.transcripts / "a.txt")]["last_error"]
    assert why.startswith(f"the embeddings API could not be reached at {api.base_url}/ (OPENAI_BASE_URL) "
                          "after 0 retries: check that address"), why
    assert why in r.stderr
