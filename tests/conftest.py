"""Shared test set-up: offline tiktoken, the local OpenAI-compatible server, a project sandbox.

Tests run the scripts the way a user or cron does: subprocesses configured by
environment variables, against the project's own OpenAI-compatible server (real
HTTP, real `openai` SDK) and a real ChromaDB in a temp folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))

from tools.seed_tiktoken_cache import DEFAULT as TIKTOKEN_DEFAULT  # noqa: E402
from tools.seed_tiktoken_cache import seed

os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_DEFAULT))
seed(Path(os.environ["TIKTOKEN_CACHE_DIR"]))

from local_openai.testing import running_server  # noqa: E402

# A recognisable fake key: tests check it never shows up in output, state or the store.
API_KEY = "sk-test-FAKEKEY-do-not-leak-0123456789"
REAL = sorted((FIXTURES / "real").glob("*.txt"))
SAMPLE_TRANSCRIPT = """[00:00:01] ALICE: Good morning, everyone. Today we talk about the harbour project.
It has been a long year. The budget was approved in March.

[00:00:15] BOB: Thanks, Alice. I have three questions about the schedule.
First, when does construction start? Second, who pays for the dredging?

[00:01:02] ALICE: Construction starts in May. The port authority pays for dredging.

CAROL: And the environmental review? We heard it was delayed again.

[00:02:30] ALICE: It was delayed by two weeks, no more.
"""


@pytest.fixture(scope="session")
def api_server():
    with running_server(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def api(api_server):
    """The local server, with counters and faults reset for this test."""
    api_server.reset()
    api_server.set_faults(latency_ms=0, latency_per_1k_tokens_ms=0, fault_rate=0, fail_next=[],
                          auth_always_fail=False, rpm=0, tpm=0, window_s=60)
    return api_server


class Project:
    """A user's set-up in a temp folder: transcripts, checkpoints, an embedded store."""

    def __init__(self, root: Path, api):
        self.root = root
        self.transcripts = root / "transcripts"
        self.checkpoints = root / "checkpoints"
        self.chroma = root / "chroma_db"
        self.transcripts.mkdir()
        self.api = api
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"],
            "TRANSCRIPTS_DIR": str(self.transcripts),
            "CHECKPOINT_DIR": str(self.checkpoints),
            "CHROMA_PATH": str(self.chroma),
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": api.base_url if api else "http://127.0.0.1:9/v1",
            "OPENAI_MAX_RETRIES": "2",
            "LEASE_SECONDS": "600",
        }

    def add(self, name: str, content: str | bytes) -> Path:
        path = self.transcripts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def add_real(self) -> list[Path]:
        return [Path(shutil.copy(p, self.transcripts / p.name)) for p in REAL]

    def run(self, script: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """Run ingestion/SCRIPT.py as a user would, from an unrelated working directory."""
        full_env = {**self.env, **{k: str(v) for k, v in env.items()}}
        full_env = {k: v for k, v in full_env.items() if v != "<unset>"}
        return subprocess.run([sys.executable, str(ROOT / "ingestion" / script), *args], env=full_env,
                              cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def ingest_all(self, **env) -> subprocess.CompletedProcess:
        gen = self.run("generate_file_queue.py", **env)
        assert gen.returncode == 0, gen.stderr
        result = self.run("process_queue_worker.py", MAX_ITERATIONS="0", **env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    @property
    def queue(self) -> dict:
        return json.loads((self.checkpoints / "file_queue.json").read_text())

    @property
    def checkpoint(self) -> dict:
        return json.loads((self.checkpoints / "checkpoint.json").read_text())

    def chunks(self, collection: str = "transcripts") -> dict:
        """Everything stored: {id: (document, metadata)}; opened fresh each time."""
        import chromadb
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        client = chromadb.PersistentClient(path=str(self.chroma))
        try:
            col = client.get_collection(collection, embedding_function=None)
            got = col.get(include=["documents", "metadatas"])
            return {i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}
        finally:
            SharedSystemClient.clear_system_cache()

    def content(self) -> dict:
        """Stored chunks as (source relative to the transcripts folder, text hash) -> (text, metadata),
        without timestamps: what must be identical between two runs in different folders."""
        prefix = str(self.transcripts) + "/"
        out = {}
        for _, (doc, meta) in self.chunks().items():
            meta = {k: v for k, v in meta.items() if k != "ingested_at"}
            meta["source"] = meta["source"].replace(prefix, "")
            if "also_sources" in meta:
                meta["also_sources"] = [s.replace(prefix, "") for s in meta["also_sources"]]
            out[(meta["source"], meta["content_sha256"])] = (doc, meta)
        return out


@pytest.fixture
def project(tmp_path, api) -> Project:
    return Project(tmp_path, api)


# ---- a real `chroma run` server -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMA_SERVER = ROOT / "deploy" / "chroma_server.sh"  # render.yaml's Chroma server: `chroma run` and its SQLite set-up


def chroma_server_env() -> dict:
    """The environment deploy/chroma_server.sh needs: this Python's `chroma` and `python` first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def start_chroma(data: Path, port: int | None = None) -> tuple[subprocess.Popen, dict]:
    """A real Chroma server (`chroma run`, from the chromadb package, as render.yaml starts it) on a free
    loopback port (or on port)."""
    port = port or free_port()
    proc = subprocess.Popen([str(CHROMA_SERVER), "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            env=chroma_server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("chroma run did not start")
            time.sleep(0.2)
    return proc, {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(port)}


@pytest.fixture(scope="session")
def chroma_service(tmp_path_factory):
    """One `chroma run` server for every test that needs only a collection of its own (tests that
    stop or kill a server start their own)."""
    proc, env = start_chroma(tmp_path_factory.mktemp("chroma-server"))
    yield env
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def chroma_server(chroma_service):
    """The shared server, with a collection no other test has used (CHROMA_COLLECTION)."""
    return {**chroma_service, "CHROMA_COLLECTION": f"t{uuid.uuid4().hex[:12]}"}
