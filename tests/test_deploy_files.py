"""The deployment files, checked without Docker or Render.

Dockerfile.ingest, .dockerignore, render.yaml, render.worker.yaml and the Render guide
must agree with the repository and with each other: every path the image copies
exists, every command they give runs a script that exists and whose `--help` works,
every flag the guide uses is one the script accepts, secrets are never values, and the
shell snippets (the privilege-dropping helper, the worker loop) behave as documented.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from ingestion import settings
from tools.seed_tiktoken_cache import CACHE_NAME

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.ingest"
DOCKERIGNORE = ROOT / ".dockerignore"
BLUEPRINT = ROOT / "render.yaml"
WORKER_BLUEPRINT = ROOT / "render.worker.yaml"
GUIDE = ROOT / "RENDER_INGESTION_WORKER_INSTRUCTIONS.md"
HELPER = "run-as-ingest"
HELPER_PATH = "/usr/local/bin/run-as-ingest"
SERVICE_TYPES = {"web", "pserv", "worker", "cron", "keyvalue"}
PLANS = {"starter", "standard", "pro", "pro_plus", "pro_max", "pro_ultra"}
SECRET_KEY = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
SCRIPT_CALL = re.compile(r"\bpython3?\s+(?:/app/)?ingestion/(\w+)\.py")
# settings the image or the helper reads besides the pipeline's own
IMAGE_SETTINGS = {"WRITABLE_DIRS", "TIKTOKEN_CACHE_DIR"}


# ---- reading the files ----------------------------------------------------------------

def dockerfile() -> list[tuple[int, str, str]]:
    """(stage, KEYWORD, arguments) per instruction; continuation lines joined the way
    Docker joins them (backslash-newline removed), comment lines dropped."""
    out, buf, stage = [], "", -1
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not buf and not stripped):
            continue
        if stripped.endswith("\\"):
            buf += line.rstrip()[:-1]
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append((stage, keyword, args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last = max(stage for stage, _, _ in instructions)
    return [(kw, args) for stage, kw, args in instructions if stage == last]


def stage_names() -> dict[str, int]:
    names = {}
    for stage, kw, args in dockerfile():
        m = re.search(r"\bAS\s+(\S+)", args, re.I) if kw == "FROM" else None
        if m:
            names[m.group(1)] = stage
    return names


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY/ADD arguments: (flags, sources, destination), shell or JSON form."""
    flags = {}
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words[:-1], words[-1]


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for kw, args in instructions:
        if kw == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def helper_script(user: str | None = None) -> str:
    """The text of run-as-ingest, produced by running the Dockerfile's own printf."""
    runs = [args for kw, args in final_stage() if kw == "RUN" and f"> {HELPER_PATH}" in args]
    assert len(runs) == 1, f"one RUN must write {HELPER_PATH}"
    printf = re.search(rf"(printf .*?> {re.escape(HELPER_PATH)})", runs[0], re.S).group(1)
    text = subprocess.run(["sh", "-c", printf.replace(f"> {HELPER_PATH}", "")], capture_output=True,
                          text=True, check=True).stdout
    if user is not None:
        assert "\nuser=ingest\n" in text
        text = text.replace("\nuser=ingest\n", f"\nuser={user}\n")
    return text


def blueprint(path: Path = BLUEPRINT) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), list) and data["services"], \
        f"{path.name}: a `services` list is required"
    return data


def services(path: Path = BLUEPRINT) -> list[dict]:
    return blueprint(path)["services"]


def service(kind: str, path: Path = BLUEPRINT) -> dict:
    found = [s for s in services(path) if s.get("type") == kind]
    assert len(found) == 1, f"{path.name}: expected one service of type {kind}, found {len(found)}"
    return found[0]


def env_vars(svc: dict) -> dict[str, dict]:
    return {e["key"]: e for e in svc.get("envVars", []) if "key" in e}


def command_words(command: str) -> list[str]:
    """A dockerCommand as an argument vector, without the leading run-as-ingest."""
    words = shlex.split(command)
    assert words and words[0] in (HELPER, HELPER_PATH), \
        f"dockerCommand must start with {HELPER} (Render replaces the ENTRYPOINT): {command!r}"
    return words[1:]


def all_commands() -> list[tuple[str, str]]:
    """(where, command text) of the Dockerfile's CMD and every dockerCommand."""
    cmds = [(kw, args) for kw, args in final_stage() if kw == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    out = [("Dockerfile CMD", shlex.join(json.loads(cmds[-1][1])))]
    for path in (BLUEPRINT, WORKER_BLUEPRINT):
        for svc in services(path):
            out.append((f"{path.name}:{svc.get('name')}", " ".join(command_words(svc["dockerCommand"]))))
    return out


def scripts_named() -> set[str]:
    """Scripts named by the guide, the Dockerfile and the Blueprints (raw text: this runs
    while tests are collected, so it must not fail; the tests check the commands)."""
    texts = [GUIDE.read_text(), DOCKERFILE.read_text(), BLUEPRINT.read_text(), WORKER_BLUEPRINT.read_text()]
    return {name for text in texts for name in SCRIPT_CALL.findall(text)}


def dockerignored(path: str) -> bool:
    """Whether Docker leaves path out of the build context (last matching pattern wins;
    a pattern that matches a folder excludes what is inside it)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            rx = ""
            i = 0
            while i < len(pattern):
                if pattern.startswith("**/", i):
                    rx, i = rx + "(?:.*/)?", i + 3
                elif pattern.startswith("**", i):
                    rx, i = rx + ".*", i + 2
                elif pattern[i] == "*":
                    rx, i = rx + "[^/]*", i + 1
                elif pattern[i] == "?":
                    rx, i = rx + "[^/]", i + 1
                else:
                    rx, i = rx + re.escape(pattern[i]), i + 1
            patterns.append((negate, re.compile(rx + "$")))
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


def run_help(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"]}
    return subprocess.run([sys.executable, str(ROOT / "ingestion" / f"{script}.py"), "--help"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


# ---- Dockerfile.ingest ------------------------------------------------------------------

def test_base_image_is_python_311_slim():
    base = [args for kw, args in final_stage() if kw == "FROM"][0]
    assert re.match(r"python:3\.11-slim\b", base), base


def test_every_copied_path_exists_and_no_env_file_is_copied():
    names = stage_names()
    copies = [(stage, args) for stage, kw, args in dockerfile() if kw in ("COPY", "ADD")]
    assert copies
    for stage, args in copies:
        flags, sources, _ = copy_parts(args)
        if "from" in flags:
            assert names.get(flags["from"], stage) < stage, f"COPY --from={flags['from']}: no such earlier stage"
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not Path(source).name.startswith(".env"), f"COPY {source}: secrets never go into the image"
            if source in (".", "./"):
                assert dockerignored(".env"), "the whole context is copied, so .dockerignore must exclude .env"


def test_requirements_are_pinned_and_installed():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.ingest.txt").read_text().splitlines()]
    assert all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.]+$", line) for line in lines if line), lines
    runs = " ".join(args for kw, args in final_stage() if kw == "RUN")
    assert "pip install" in runs and "requirements.ingest.txt" in runs


def test_code_is_under_app_and_the_checkpoint_folder_is_writable():
    stage = final_stage()
    assert [args for kw, args in stage if kw == "WORKDIR"][-1] == "/app"
    copies = [copy_parts(args) for kw, args in stage if kw == "COPY"]
    assert any(srcs == ["ingestion/"] and dest.rstrip("/") == "/app/ingestion" for _, srcs, dest in copies)
    user = image_user()
    chowns = [args for kw, args in stage if kw == "RUN" and "chown" in args and "/app/checkpoints" in args]
    assert chowns and all(user in args for args in chowns), "/app/checkpoints must belong to the image's user"


def test_tiktoken_encoding_is_fetched_at_build_time():
    stage = final_stage()
    cache = env_of(stage).get("TIKTOKEN_CACHE_DIR")
    assert cache and cache.startswith("/") and not cache.startswith("/tmp"), \
        "the image must set TIKTOKEN_CACHE_DIR to a folder of its own"
    set_at = next(i for i, (kw, args) in enumerate(stage) if kw == "ENV" and "TIKTOKEN_CACHE_DIR" in args)
    fetch = [args for kw, args in stage[set_at:] if kw == "RUN" and "get_encoding" in args]
    assert fetch and "cl100k_base" in fetch[0] and "tiktoken" in fetch[0], \
        "a RUN after ENV TIKTOKEN_CACHE_DIR must load cl100k_base (downloading it into the cache)"
    assert f"{cache}/{CACHE_NAME}" in fetch[0], "the build must check that the cache file is there"


def test_image_settings_match_the_code_defaults():
    env = env_of(final_stage())
    for name in ("TRANSCRIPTS_DIR", "CHECKPOINT_DIR", "CHROMA_PATH"):
        assert env.get(name, settings._BY_NAME[name].default) == settings._BY_NAME[name].default, name


def image_user() -> str:
    """The non-root user the Dockerfile creates (useradd with a uid other than 0)."""
    adds = [part for kw, args in final_stage() if kw == "RUN"
            for part in re.split(r"&&|;", args) if part.split()[:1] == ["useradd"]]
    assert len(adds) == 1, "the image must create its user with one useradd"
    words = shlex.split(adds[0])
    assert "--uid" in words and int(words[words.index("--uid") + 1]) != 0, adds[0]
    return words[-1]


def test_nothing_runs_as_root():
    """The image ends as a non-root USER, or starts as root only to drop it through the
    helper: then the helper is the ENTRYPOINT and setpriv-s to the created user."""
    stage = final_stage()
    user = image_user()
    users = [args for kw, args in stage if kw == "USER"]
    if users and users[-1].split(":")[0] not in ("root", "0"):
        return
    entry = [args for kw, args in stage if kw == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) in ([HELPER], [HELPER_PATH]), \
        "an image that starts as root needs the privilege-dropping helper as its ENTRYPOINT"
    script = helper_script()
    assert f"\nuser={user}\n" in script
    last = [line for line in script.splitlines() if line.strip()][-1]
    assert last.startswith("exec setpriv --reuid=") and last.endswith('"$@"'), last


def test_cmd_is_the_worker():
    cmd = [args for kw, args in final_stage() if kw == "CMD"][-1]
    assert json.loads(cmd) == ["python", "ingestion/process_queue_worker.py"]


@pytest.fixture
def helper_as_nobody():
    """The Dockerfile's helper, made to drop to `nobody` (the image's user does not exist
    here), in a folder under /tmp that `nobody` can reach (pytest's tmp_path is private)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to switch users")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    where = Path(tempfile.mkdtemp(prefix="deploy-helper-", dir="/tmp"))
    where.chmod(0o755)
    path = where / HELPER
    path.write_text(helper_script(user="nobody"))
    path.chmod(0o755)
    try:
        yield path, nobody.pw_uid
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_helper_hands_the_disk_over_and_drops_root(helper_as_nobody):
    helper, uid = helper_as_nobody
    disk = helper.parent / "disk"
    (disk / "chroma").mkdir(parents=True, mode=0o700)
    (disk / "chroma" / "made-by-root").write_text("x")
    proc = subprocess.Popen([str(helper), "sh", "-c", 'echo "$$ $(id -u)"; touch "$1/new"', "sh", str(disk)],
                            env=dict(os.environ, WRITABLE_DIRS=f"{disk} {helper.parent / 'absent'}"),
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    pid, run_uid = out.split()
    assert int(run_uid) == uid, "the command must run as the unprivileged user"
    assert int(pid) == proc.pid, "the helper must exec the command (so it is PID 1 and gets SIGTERM)"
    assert all(p.stat().st_uid == uid for p in [disk, *disk.rglob("*")]), "every entry of the disk goes to the user"


def test_helper_leaves_a_non_root_caller_alone_and_needs_a_command(helper_as_nobody):
    helper, uid = helper_as_nobody
    as_nobody = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    out = subprocess.run(as_nobody + [str(helper), "id", "-u"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == str(uid)
    assert subprocess.run([str(helper)], capture_output=True, timeout=30).returncode == 2


# ---- .dockerignore ------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    ".env", ".env.local", "sub/.env", ".git/config", ".venv/bin/python", "checkpoints/file_queue.json",
    "chroma_db/chroma.sqlite3", "ingestion/__pycache__/worker.cpython-311.pyc", ".cache/tiktoken/x",
    ".pytest_cache/v/x", "bench/work/corpus/a.txt", "tests/fixtures/real/a.txt"])
def test_dockerignore_keeps_out(path):
    assert dockerignored(path), f"{path} must not reach the build context"


@pytest.mark.parametrize("path", [
    "requirements.ingest.txt", "ingestion/worker.py", "transcripts/case/a.txt", "Dockerfile.ingest"])
def test_dockerignore_keeps_in(path):
    assert not dockerignored(path), f"{path} is needed by the build"


# ---- render.yaml and render.worker.yaml ---------------------------------------------------

@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_every_service_has_the_fields_render_expects(path):
    names = [s.get("name") for s in services(path)]
    assert len(set(names)) == len(names), "service names must be unique"
    for svc in services(path):
        assert svc.get("type") in SERVICE_TYPES and svc.get("name") and svc.get("runtime") == "docker", svc
        assert svc.get("plan") in PLANS, f"{svc['name']}: plan {svc.get('plan')!r}"
        assert svc.get("dockerfilePath") == "./Dockerfile.ingest" and DOCKERFILE.is_file()
        assert svc.get("dockerContext") in (".", "./")
        assert isinstance(svc.get("dockerCommand"), str) and command_words(svc["dockerCommand"])
        disk = svc.get("disk")
        if disk is not None:
            assert svc["type"] in ("web", "pserv", "worker"), f"{svc['name']}: a {svc['type']} can't have a disk"
            assert disk.get("name") and PurePosixPath(disk.get("mountPath", "")).is_absolute()
            assert isinstance(disk.get("sizeGB"), int) and disk["sizeGB"] > 0


def test_cron_runs_every_five_minutes_without_a_disk():
    cron = service("cron")
    assert cron.get("schedule") == "*/5 * * * *"
    assert re.search(r'^\s*schedule:\s*(["\'])\*/5 \* \* \* \*\1\s*(#.*)?$', BLUEPRINT.read_text(), re.M), \
        "the schedule must be a quoted string"
    assert "disk" not in cron, "cron jobs can't have a disk"


def test_chroma_server_stores_on_its_disk():
    pserv = service("pserv")
    words = command_words(pserv["dockerCommand"])
    assert words[:2] == ["chroma", "run"], words
    opts = dict(zip(words[2::2], words[3::2]))
    assert opts.get("--host") == "0.0.0.0", "the server must listen on the private network"
    assert opts.get("--port", "").isdigit()
    data, mount = PurePosixPath(opts["--path"]), PurePosixPath(pserv["disk"]["mountPath"])
    assert data == mount or mount in data.parents, f"--path {data} is not on the disk at {mount}"


def test_cron_reaches_the_chroma_server_over_the_private_network():
    pserv, cron = service("pserv"), service("cron")
    env = env_vars(cron)
    for key, prop in (("CHROMA_HOST", "host"), ("CHROMA_PORT", "port")):
        assert env.get(key, {}).get("fromService") == {"name": pserv["name"], "type": "pserv", "property": prop}, key
    assert cron.get("region") == pserv.get("region"), "the private network only joins one region"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_secrets_are_never_values(path):
    assert not re.search(r"sk-[A-Za-z0-9]", path.read_text()), "an API key in a Blueprint"
    for svc in services(path):
        env = env_vars(svc)
        for key, entry in env.items():
            if SECRET_KEY.search(key):
                assert entry.get("sync") is False and "value" not in entry, f"{svc['name']}: {key} needs sync: false"
        if SCRIPT_CALL.search(svc["dockerCommand"]):
            assert "OPENAI_API_KEY" in env, f"{svc['name']} embeds, so it needs OPENAI_API_KEY (sync: false)"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_environment_names_are_real_settings(path):
    known = {s.name for s in settings.SETTINGS} | IMAGE_SETTINGS
    for svc in services(path):
        for key, entry in env_vars(svc).items():
            assert key in known, f"{svc['name']}: {key} is read by nothing"
            if "value" in entry:
                assert isinstance(entry["value"], str), f"{svc['name']}: quote the value of {key}"


def test_single_worker_variant_keeps_its_state_on_its_disk():
    worker = service("worker", WORKER_BLUEPRINT)
    mount = PurePosixPath(worker["disk"]["mountPath"])
    env = env_vars(worker)
    for key in ("CHECKPOINT_DIR", "CHROMA_PATH"):
        assert mount in PurePosixPath(env[key]["value"]).parents, f"{key} must be on the disk"
    assert env["MAX_ITERATIONS"]["value"] == "0"
    assert "CHROMA_HOST" not in env, "this variant uses the embedded store"
    assert worker["plan"] in ("pro", "pro_plus", "pro_max", "pro_ultra"), "the embedded index needs 4 GB or more"


def test_guide_shows_the_worker_variant_as_it_is_in_render_worker_yaml():
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert any(yaml.safe_load(b) == blueprint(WORKER_BLUEPRINT) for b in blocks), \
        "the guide's YAML snippet differs from render.worker.yaml"


# ---- the commands -----------------------------------------------------------------------

def test_every_command_runs_a_script_that_exists():
    for where, command in all_commands():
        if command.startswith("chroma run"):
            continue
        scripts = SCRIPT_CALL.findall(command)
        assert scripts, f"{where}: expected `python ingestion/<script>.py`, got {command!r}"
        for script in scripts:
            assert (ROOT / "ingestion" / f"{script}.py").is_file(), f"{where}: ingestion/{script}.py is missing"


@pytest.mark.parametrize("script", sorted(scripts_named()))
def test_named_script_help_exits_zero(script, tmp_path):
    assert (ROOT / "ingestion" / f"{script}.py").is_file(), f"ingestion/{script}.py is named but missing"
    result = run_help(script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


def guide_flags() -> list[tuple[str, str]]:
    """(script, --flag) for every flag written after a script in the guide's commands."""
    pairs = set()
    for m in re.finditer(r"ingestion/(\w+)\.py([^`\n'|]*)", GUIDE.read_text()):
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2)):
            pairs.add((m.group(1), flag))
    return sorted(pairs)


@pytest.mark.parametrize("script,flag", guide_flags())
def test_guide_uses_only_flags_the_scripts_accept(script, flag, tmp_path):
    result = run_help(script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), \
        f"the guide runs ingestion/{script}.py {flag}, which its --help does not list"


def test_guide_names_files_that_exist():
    text = GUIDE.read_text()
    for name in ("Dockerfile.ingest", ".dockerignore", "render.yaml", "render.worker.yaml",
                 "requirements.ingest.txt", "tests/fixtures/real"):
        assert f"`{name}`" in text and (ROOT / name).exists(), name


# Messages the guide quotes, as the code writes them (format strings cut at placeholders).
QUOTED_MESSAGES = [
    "its process was killed (SIGKILL); requeued (a second kill splits it)", "parts, queued first",
    "cannot reach the Chroma server at", "the embeddings API refused the key (HTTP",
    "OPENAI_API_KEY is not set", "is not a folder", "already in the store", "files run (",
    "stale removed), ", "peak RSS", "chunks checked; ",
]


@pytest.mark.parametrize("message", QUOTED_MESSAGES)
def test_guide_quotes_messages_the_code_prints(message):
    code = "".join(p.read_text() for p in sorted((ROOT / "ingestion").glob("*.py")))
    assert message in GUIDE.read_text(), f"the guide no longer quotes {message!r}: update QUOTED_MESSAGES"
    assert message in code, f"the guide quotes {message!r}, which the code no longer prints"


def test_guide_progress_one_liner_reads_the_queue(tmp_path):
    lines = [line for line in GUIDE.read_text().splitlines() if "json.load(open(" in line]
    assert lines, "the guide must show the progress one-liner"
    queue = tmp_path / "file_queue.json"
    queue.write_text(json.dumps({"pending": ["a", "b"], "processing": [], "completed": ["c"], "failed": [],
                                 "files": {}}))
    for line in lines:
        assert line.startswith("python3 -c ")
        path = re.search(r"open\('([^']+)'\)", line).group(1)
        assert path.endswith("/file_queue.json")
        command = line.replace(path, str(queue)).replace("python3", shlex.quote(sys.executable), 1)
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "Pending: 2, Completed: 1, Failed: 0", out


# ---- the worker variant's loop ------------------------------------------------------------

STUB_WORKER = """import signal, sys, time
def stop(signum, frame):
    open("released", "w").write(str(signum)); sys.exit(7)
signal.signal(signal.SIGTERM, stop)
open("running", "w").write("x")
time.sleep(SECONDS)
"""


def start_loop(tmp_path: Path, worker_seconds: float) -> subprocess.Popen:
    """Run render.worker.yaml's command (minus run-as-ingest) with stub scripts."""
    words = command_words(service("worker", WORKER_BLUEPRINT)["dockerCommand"])
    assert words[:2] == ["sh", "-c"], words
    (tmp_path / "ingestion").mkdir()
    (tmp_path / "ingestion" / "generate_file_queue.py").write_text("open('generated', 'a').write('x')\n")
    (tmp_path / "ingestion" / "process_queue_worker.py").write_text(
        STUB_WORKER.replace("SECONDS", repr(worker_seconds)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    # its own process group, so that cleanup() can end whatever a broken loop leaves behind
    return subprocess.Popen(["sh", "-c", words[2]], cwd=tmp_path, env=env, start_new_session=True)


def cleanup(loop: subprocess.Popen) -> None:
    try:
        os.killpg(loop.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    loop.wait(timeout=10)


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def sleeping_children(pid: int) -> list[int]:
    """The `sleep` processes whose parent is pid."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and argv[0].endswith(b"sleep"):
            out.append(int(stat.parent.name))
    return out


def test_worker_loop_passes_sigterm_to_the_worker(tmp_path):
    loop = start_loop(tmp_path, worker_seconds=60)
    try:
        wait_for(tmp_path / "running")
        assert (tmp_path / "generated").exists(), "the loop refreshes the queue first"
        loop.send_signal(signal.SIGTERM)
        loop.wait(timeout=15)
    finally:
        cleanup(loop)
    assert (tmp_path / "released").read_text() == str(int(signal.SIGTERM)), "the worker never got SIGTERM"


def test_worker_loop_sleeps_between_runs_and_stops_on_sigterm(tmp_path):
    loop = start_loop(tmp_path, worker_seconds=0)
    try:
        wait_for(tmp_path / "running")
        deadline = time.monotonic() + 30
        while not (kids := sleeping_children(loop.pid)):
            assert time.monotonic() < deadline, "the loop never started its sleep"
            time.sleep(0.05)
        time.sleep(0.3)
        assert (tmp_path / "generated").read_text() == "x", "one round, then a pause"
        loop.send_signal(signal.SIGTERM)
        loop.wait(timeout=15)
        time.sleep(0.2)
        left = [k for k in kids if Path(f"/proc/{k}").exists()]
    finally:
        cleanup(loop)
    assert not left, "the loop left its sleep running"
