"""Every setting the pipeline reads: its name, default, meaning and parsing.

Settings come from the environment, and from a `.env` file (python-dotenv) in the
working directory or the project root; a variable already set in the environment
wins over `.env`. Command-line flags override both. A `.env` is read whole or not at
all: one python-dotenv cannot read completely stops the run (load()), naming its line.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ingestion.common.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    read_by: str  # the scripts that read it, themselves or in their children: letters of SCRIPTS


# The scripts, by the letter SETTINGS uses for them. The worker runs ingest_one_file.py's code for
# each file, so it reads everything that script reads.
SCRIPTS = {"g": "generate_file_queue.py", "i": "ingest_one_file.py", "w": "process_queue_worker.py",
           "a": "auto_chunker.py", "o": "optimize_chromadb.py", "q": "query_chromadb.py"}
_STORE = "giwoq"
_EMBED = "iwq"
_CUT = "giwo"  # how files are cut: part of a collection's record

# One line a setting. The README's configuration table and every --help come from this list.
SETTINGS = [
    Setting("TRANSCRIPTS_DIR", "/app/10K2Kv2", "folder scanned recursively for *.txt", "giwa"),
    Setting("CHECKPOINT_DIR", "/app/checkpoints",
            "holds file_queue.json, checkpoint.json, split parts (splits/) and paid vectors waiting to be "
            "stored (unwritten/)", "giwa"),
    Setting("CHROMA_PATH", "/app/chroma_db", "embedded ChromaDB directory (PersistentClient)", _STORE),
    Setting("CHROMA_COLLECTION", "transcripts", "collection name (cosine space)", _STORE),
    Setting("CHROMA_HOST", None, "when set, use a Chroma server (HttpClient) instead of CHROMA_PATH", _STORE),
    Setting("CHROMA_PORT", "8000", "Chroma server port", _STORE),
    Setting("CHROMA_SSL", "false", "use https to reach the Chroma server", _STORE),
    Setting("CHROMA_AUTH_TOKEN", None, "bearer token sent to the Chroma server, if it needs one", _STORE),
    Setting("CHROMA_API_KEY", None,
            "when set, use Chroma Cloud (CloudClient) with CHROMA_TENANT and CHROMA_DATABASE", _STORE),
    Setting("CHROMA_TIMEOUT", "120", "seconds a store call may take before the run stops (the file is "
            "released)", _STORE),
    Setting("CHROMA_TENANT", None, "Chroma Cloud tenant", _STORE),
    Setting("CHROMA_DATABASE", None, "Chroma Cloud database", _STORE),
    Setting("OPENAI_API_KEY", None, "the OpenAI SDK's own variable; required to embed", _EMBED),
    Setting("OPENAI_BASE_URL", None, "the OpenAI SDK's own variable (an OpenAI-compatible server)", _EMBED),
    Setting("OPENAI_MAX_RETRIES", "5", "SDK retries per request (429, 5xx, timeouts) before a file is requeued",
            _EMBED),
    Setting("OPENAI_TIMEOUT", "60", "seconds before one embeddings request times out", _EMBED),
    Setting("RATE_LIMIT_WINDOW_SECONDS", "60", "the API's rate-limit window, for pacing, until its answers say it "
            "(x-ratelimit-reset-* with the limit and what remains); OpenAI's limits are per minute", _EMBED),
    Setting("EMBEDDING_MODEL", "text-embedding-3-small", "OpenAI embeddings model", "giwoq"),
    Setting("EMBEDDING_DIMENSIONS", None, "shorter vectors (text-embedding-3 only); unset: the model's default",
            "giwoq"),
    Setting("CHUNK_MAX_TOKENS", "500", "hard upper bound per chunk (tiktoken cl100k_base)", _CUT),
    Setting("CHUNK_OVERLAP_TOKENS", "50", "tokens of the previous chunk repeated at the start of the next", _CUT),
    Setting("TEXT_CLEANUP", "auto", "auto: strip page furniture and word indexes of paginated transcripts, "
            "add page:line; off: read every file as it is", _CUT),
    Setting("EMBED_BATCH_SIZE", "16", "chunks per embeddings request at most (a file's chunks are spread evenly "
            "over EMBED_CONCURRENCY requests; at most 2048)", "iw"),
    Setting("EMBED_CONCURRENCY", "4", "embeddings requests in flight at once", "iw"),
    Setting("MAX_ITERATIONS", "1", "files per worker run; 0 means until the queue is empty", "w"),
    Setting("FILES_PER_CHILD", "1",
            "files one worker subprocess takes before it is replaced (1: a fresh process per file)", "w"),
    Setting("FILE_CONCURRENCY", "4", "files the worker ingests at once: that many subprocesses side by side "
            "(threads of one subprocess when FILES_PER_CHILD > 1)", "w"),
    Setting("CHILD_MAX_RSS_MB", "1500",
            "a worker subprocess above this RSS takes no further file (FILES_PER_CHILD > 1)", "w"),
    Setting("WORKER_SHARD", None, "i/N: this worker takes only the files whose path hash falls in shard i of N",
            "giw"),
    Setting("MAX_ATTEMPTS", "3", "tries per file after transient API errors before it is failed", "iw"),
    Setting("LEASE_SECONDS", "600",
            "a lease on a file not renewed for this long (by a process elsewhere) is stale", "iw"),
    Setting("GRACE_SECONDS", "90", "after SIGTERM, seconds the worker gives its subprocess to release the file "
            "before killing it (keep it under the platform's shutdown delay)", "w"),
    Setting("MEMORY_LIMIT_MB", None, "when set, an ingesting process above this RSS counts as out of memory", "iw"),
    Setting("CAPACITY_CHECK", "refuse", "refuse: an embedded run whose projected store does not fit this machine's "
            "memory or disk is refused before anything is claimed (exit 2); warn: say so and go on", "w"),
    Setting("SPLIT_PARTS", "4", "parts a file is split into after running out of memory", "iwa"),
    Setting("SPLIT_MIN_BYTES", "65536", "a part this small that still runs out of memory is failed", "iw"),
    Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", "giwaoq"),
    Setting("LOG_FORMAT", "text", "text, or json for log platforms (one JSON object a line)", "giwaoq"),
]
_BY_NAME = {s.name: s for s in SETTINGS}

_dotenv_loaded = False
_dotenv_problem: str | None = None  # why the `.env` file was not read; load() stops the run with it


def load_dotenv_once() -> None:
    """Read `.env` from the working directory, else the project root (environment wins).

    A file that cannot be read completely is not read at all (python-dotenv would skip its bad
    lines with a warning and run on the defaults): load() then stops the run, naming the line.
    ChromaDB reads `.env` in the working directory too, when it is imported: only after load()."""
    global _dotenv_loaded, _dotenv_problem
    if _dotenv_loaded:
        return
    _dotenv_loaded = True
    from dotenv import load_dotenv

    for candidate in (Path.cwd() / ".env", PROJECT_ROOT / ".env"):
        if candidate.is_file():
            _dotenv_problem = dotenv_problem(candidate)
            if _dotenv_problem is None:
                load_dotenv(candidate, override=False)
            break


def dotenv_problem(path: Path) -> str | None:
    """Why the settings file at path cannot be read completely (its first bad line), or None."""
    from dotenv.parser import parse_stream

    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as e:
        return f"cannot read the settings file {path}: {e.strerror}"
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        return f"settings file {path}, line {line}: not UTF-8 text; save the file as UTF-8"
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):  # (a name alone sets nothing)
            line, name, why = _bad_line(binding.original.string, binding.original.line)
            named = f" ({name})" if name in _BY_NAME else ""
            return f"settings file {path}, line {line}{named}: {why}; nothing was run: fix that line (NAME=value)"
    return None


def _bad_line(text: str, line: int) -> tuple[int, str, str]:
    """A statement python-dotenv could not read, as (its line, the name it starts with, what is wrong).
    python-dotenv counts the blank lines before a statement as part of it: they are skipped here."""
    blank = re.match(r"\s*", text).group()
    line += len(re.findall(r"\r\n|\r|\n", blank))
    first = re.sub(r"^export[^\S\r\n]+", "", text[len(blank):]).splitlines()[0]
    name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", first)
    if "=" not in first:
        why = "no '=' in it"
    elif first.split("=", 1)[1].lstrip()[:1] in ("'", '"'):
        why = "a quote is not closed, or there is text after the closing quote"
    else:
        why = "not a NAME=value line"
    return line, name.group() if name else "", why


def raw(name: str) -> str | None:
    """The setting's value as text: environment (or .env), else its default."""
    load_dotenv_once()
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return _BY_NAME[name].default
    return value.strip()


def _int(name: str, minimum: int = 0, maximum: int | None = None) -> int:
    text = raw(name)
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def _bool(name: str) -> bool:
    return (raw(name) or "").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    transcripts_dir: Path
    checkpoint_dir: Path
    chroma_path: Path
    chroma_collection: str
    chroma_host: str | None
    chroma_port: int
    chroma_ssl: bool
    chroma_auth_token: str | None
    chroma_api_key: str | None
    chroma_tenant: str | None
    chroma_database: str | None
    chroma_timeout: int
    embedding_model: str
    embedding_dimensions: int | None
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    embed_batch_size: int
    embed_concurrency: int
    max_iterations: int
    files_per_child: int
    child_max_rss_mb: int
    file_concurrency: int
    max_attempts: int
    lease_seconds: int
    memory_limit_mb: int | None
    split_parts: int
    split_min_bytes: int
    openai_max_retries: int
    openai_timeout: float
    rate_limit_window: float
    text_cleanup: str
    worker_shard: tuple[int, int] | None
    grace_seconds: int

    @property
    def remote_store(self) -> bool:
        """A Chroma server or Chroma Cloud: shared by machines, no local lock."""
        return bool(self.chroma_host or self.chroma_api_key)

    @property
    def store_address(self) -> str:
        """Where the store is, as a queue records it: a folder, a server URL, or a Chroma Cloud database."""
        if self.chroma_api_key:
            return f"chroma-cloud:{self.chroma_tenant or ''}/{self.chroma_database or ''}"
        if self.chroma_host:
            return f"{'https' if self.chroma_ssl else 'http'}://{self.chroma_host}:{self.chroma_port}"
        return str(self.chroma_path)

    @property
    def allowed_roots(self) -> list[Path]:
        """The only folders a queued file may be read from."""
        return [self.transcripts_dir, self.splits_dir]

    @property
    def queue_path(self) -> Path:
        return self.checkpoint_dir / "file_queue.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir / "checkpoint.json"

    @property
    def splits_dir(self) -> Path:
        return self.checkpoint_dir / "splits"


def load(overrides: dict[str, str | None] | None = None) -> Config:
    """Build the Config from environment, `.env` and flag overrides (name -> value)."""
    load_dotenv_once()
    if _dotenv_problem:
        raise ConfigError(_dotenv_problem)
    for name, value in (overrides or {}).items():
        if value is not None:
            os.environ[name] = str(value)
    max_tokens = _int("CHUNK_MAX_TOKENS", 16, 8192)
    overlap = _int("CHUNK_OVERLAP_TOKENS", 0)
    if overlap >= max_tokens // 2:
        raise ConfigError(
            f"CHUNK_OVERLAP_TOKENS ({overlap}) must be less than half of CHUNK_MAX_TOKENS ({max_tokens})")
    memory = raw("MEMORY_LIMIT_MB")
    dims = raw("EMBEDDING_DIMENSIONS")
    return Config(
        transcripts_dir=Path(raw("TRANSCRIPTS_DIR")).expanduser().absolute(),
        checkpoint_dir=Path(raw("CHECKPOINT_DIR")).expanduser().absolute(),
        chroma_path=Path(raw("CHROMA_PATH")).expanduser().absolute(),
        chroma_collection=raw("CHROMA_COLLECTION"),
        chroma_host=raw("CHROMA_HOST"),
        chroma_port=_int("CHROMA_PORT", 1, 65535),
        chroma_ssl=_bool("CHROMA_SSL"),
        chroma_auth_token=raw("CHROMA_AUTH_TOKEN"),
        chroma_api_key=raw("CHROMA_API_KEY"),
        chroma_tenant=raw("CHROMA_TENANT"),
        chroma_database=raw("CHROMA_DATABASE"),
        chroma_timeout=_int("CHROMA_TIMEOUT", 1),
        embedding_model=raw("EMBEDDING_MODEL"),
        embedding_dimensions=_int("EMBEDDING_DIMENSIONS", 1) if dims else None,
        chunk_max_tokens=max_tokens,
        chunk_overlap_tokens=overlap,
        embed_batch_size=_int("EMBED_BATCH_SIZE", 1, 2048),
        embed_concurrency=_int("EMBED_CONCURRENCY", 1, 64),
        max_iterations=_int("MAX_ITERATIONS", 0),
        files_per_child=_int("FILES_PER_CHILD", 1),
        child_max_rss_mb=_int("CHILD_MAX_RSS_MB", 100),
        file_concurrency=_int("FILE_CONCURRENCY", 1, 16),
        max_attempts=_int("MAX_ATTEMPTS", 1),
        lease_seconds=_int("LEASE_SECONDS", 10),
        memory_limit_mb=_int("MEMORY_LIMIT_MB", 1) if memory else None,
        split_parts=_int("SPLIT_PARTS", 2, 100),
        split_min_bytes=_int("SPLIT_MIN_BYTES", 1),
        openai_max_retries=_int("OPENAI_MAX_RETRIES", 0, 20),
        openai_timeout=float(_int("OPENAI_TIMEOUT", 1)),
        rate_limit_window=float(_int("RATE_LIMIT_WINDOW_SECONDS", 1, 300)),
        text_cleanup=_choice("TEXT_CLEANUP", ("auto", "off")),
        worker_shard=_shard(),
        grace_seconds=_int("GRACE_SECONDS", 1, 3600),
    )


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    value = (raw(name) or "").lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw(name)!r}")
    return value


def _shard() -> tuple[int, int] | None:
    spec = raw("WORKER_SHARD")
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ConfigError(f"WORKER_SHARD must look like i/N with 0 <= i < N, got {spec!r}") from None
    return i, n


def api_key() -> str:
    """OPENAI_API_KEY, or a ConfigError saying where it belongs."""
    key = raw("OPENAI_API_KEY")
    if not key:
        raise ConfigError("OPENAI_API_KEY is not set: put it in the environment or in .env "
                          "(never in the queue, the image or the code)")
    return key


def help_table(script: str) -> str:
    """The settings a script (and its children) read, as `--help` epilog lines: NAME meaning (default: X)."""
    letter = next(k for k, v in SCRIPTS.items() if v == script)
    lines = ["settings (environment variables, also read from .env):"]
    for s in SETTINGS:
        if letter not in s.read_by:
            continue
        default = s.default if s.default is not None else "unset"
        lines.append(f"  {s.name:<22} {s.help} (default: {default})")
    return "\n".join(lines)
