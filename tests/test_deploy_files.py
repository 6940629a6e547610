"""The deployment files, checked without Docker or Render.

Dockerfile.ingest, .dockerignore, render.yaml, render.worker.yaml, deploy/worker_loop.sh
and the Render guide must agree with the repository, with each other and with Render's
Blueprint spec (render.com/docs/blueprint-spec, read 2026-11-29): every path the image
copies exists, every command they give runs a script that exists and whose `--help`
works, every flag the guide uses is one the script accepts, plan names are the spec's,
every service that embeds gets the API key from the Dashboard-made environment group,
secrets are never values, the Chroma service rebuilds only for what its image needs,
the shutdown delay covers the release of a file, and the shell scripts (the
privilege-dropping helper, the worker loop) behave as documented.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from ingestion.common import settings
from tools.seed_tiktoken_cache import CACHE_NAME

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.ingest"
DOCKERIGNORE = ROOT / ".dockerignore"
BLUEPRINT = ROOT / "render.yaml"
WORKER_BLUEPRINT = ROOT / "render.worker.yaml"
GUIDE = ROOT / "RENDER_INGESTION_WORKER_INSTRUCTIONS.md"
LOOP = ROOT / "deploy" / "worker_loop.sh"
HELPER = "run-as-ingest"
HELPER_PATH = "/usr/local/bin/run-as-ingest"
SERVICE_TYPES = {"web", "pserv", "worker", "cron", "keyvalue"}
# Blueprint spec, `plan`: "free (not available for private services, background workers, or
# cron jobs), starter, standard, pro, pro plus", and for web services, private services and
# background workers only, "pro max, pro ultra". Spelled with spaces.
PLANS = {"starter", "standard", "pro", "pro plus"}
BIG_PLANS = {"pro max", "pro ultra"}
BIG_PLAN_TYPES = {"web", "pserv", "worker"}
# Blueprint spec: maxShutdownDelaySeconds is for "Web services, private services, and
# background workers only", "an integer between 1 and 300", default 30.
SHUTDOWN_DELAY_TYPES = {"web", "pserv", "worker"}
SHUTDOWN_DELAY_MAX = 300
# After the last embeddings request returns, the file's process stops between batches and
# writes the release; after it has gone, the worker records the outcome and exits.
RELEASE_SECONDS = 10
EXIT_SECONDS = 10
# render.com/docs/private-network: ports that "cannot be used for private network communication".
RESERVED_PRIVATE_PORTS = {10000, 18012, 18013, 19099}
# The environment group made in the Dashboard that holds OPENAI_API_KEY (guide, section 2).
SECRET_GROUP = "transcripts-secrets"
# What the Chroma server depends on: the image recipe, what the build sees, the pinned chromadb, its start
# script and the SQLite set-up that script runs beside `chroma run`.
CHROMA_IMAGE_INPUTS = {"Dockerfile.ingest", ".dockerignore", "requirements.ingest.txt", "deploy/chroma_server.sh",
                       "ingestion/storage/chroma_sqlite.py"}
CHROMA_SERVER = "/app/deploy/chroma_server.sh"  # in the image: `chroma run` with the SQLite set-up beside it
SECRET_KEY = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
SCRIPT_CALL = re.compile(r"\bpython3?\s+(?:/app/)?ingestion/(\w+)\.py")
# settings the image or the helper reads besides the pipeline's own
IMAGE_SETTINGS = {"WRITABLE_DIRS", "TIKTOKEN_CACHE_DIR"}
# the scripts that call the embeddings API, so need OPENAI_API_KEY (the worker runs ingest_one_file's code)
EMBEDDING_SCRIPTS = {"ingest_one_file", "process_queue_worker", "query_chromadb"}


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
        f"dockerCommand must start with {HELPER} (Render's docs do not say it keeps the ENTRYPOINT): {command!r}"
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


def image_to_repo(path: str) -> Path | None:
    """The repository file the Dockerfile copies to `path` in the image (None: not copied)."""
    for kw, args in final_stage():
        if kw != "COPY":
            continue
        flags, sources, dest = copy_parts(args)
        if "from" in flags:
            continue
        for source in sources:
            if dest.rstrip("/") == path.rstrip("/"):
                return ROOT / source
            if dest.endswith("/") and source.endswith("/") and path.startswith(dest):
                return ROOT / source / path[len(dest):]
    return None


def command_scripts(words: list[str]) -> tuple[list[str], str]:
    """(ingestion scripts a command runs, text they were found in): a command either runs
    python ingestion/X.py itself or is a shell script of the image that does."""
    text = " ".join(words)
    if words and words[0].startswith("/") and words[0].endswith(".sh"):
        repo = image_to_repo(words[0])
        assert repo is not None and repo.is_file(), f"{words[0]} is not copied into the image"
        text = repo.read_text()
    return SCRIPT_CALL.findall(text), text


def scripts_named() -> set[str]:
    """Scripts named by the guide, the Dockerfile, the Blueprints and the loop (raw text: this
    runs while tests are collected, so it must not fail; the tests check the commands)."""
    texts = [GUIDE.read_text(), DOCKERFILE.read_text(), BLUEPRINT.read_text(), WORKER_BLUEPRINT.read_text(),
             LOOP.read_text() if LOOP.is_file() else ""]
    return {name for text in texts for name in SCRIPT_CALL.findall(text)}


def glob_regex(pattern: str) -> str:
    """A path glob (`**/`, `**`, `*`, `?`) as a regular expression."""
    rx, i = "", 0
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
    return rx


def glob_match(pattern: str, path: str) -> bool:
    """A buildFilter path pattern (glob, relative to the repository root) against a path."""
    return re.fullmatch(glob_regex(pattern), path) is not None


def rebuilds_for(svc: dict, path: str) -> bool:
    """Whether a commit changing `path` triggers an automatic build of the service."""
    flt = svc.get("buildFilter")
    if not flt:
        return True
    included = not flt.get("paths") or any(glob_match(p, path) for p in flt["paths"])
    return included and not any(glob_match(p, path) for p in flt.get("ignoredPaths") or [])


# A file of each kind the image is built from (Dockerfile.ingest copies them).
IMAGE_INPUTS = ["Dockerfile.ingest", ".dockerignore", "requirements.ingest.txt", "ingestion/run/worker.py",
                "ingestion/common/settings.py", "deploy/worker_loop.sh", "transcripts/case/a.txt", "transcripts/b.txt"]
NOT_IMAGE_INPUTS = ["README.md", "RENDER_INGESTION_WORKER_INSTRUCTIONS.md", "tests/test_pipeline.py",
                    "bench/RESULTS.md", "local_openai/server.py"]


def setting_value(svc: dict, name: str) -> str:
    """What a setting is on a service: its value in the Blueprint, else the code's default."""
    entry = env_vars(svc).get(name)
    if entry is not None and "value" in entry:
        return entry["value"]
    assert name in settings._BY_NAME, f"{name} is not a setting of ingestion/common/settings.py"
    return settings._BY_NAME[name].default


def runs_scripts(svc: dict) -> list[str]:
    return command_scripts(command_words(svc["dockerCommand"]))[0]


def dockerignored(path: str) -> bool:
    """Whether Docker leaves path out of the build context (last matching pattern wins;
    a pattern that matches a folder excludes what is inside it)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            patterns.append((negate, re.compile(glob_regex(pattern) + "$")))
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
    "requirements.ingest.txt", "ingestion/run/worker.py", "transcripts/case/a.txt", "Dockerfile.ingest",
    "deploy/worker_loop.sh"])
def test_dockerignore_keeps_in(path):
    assert not dockerignored(path), f"{path} is needed by the build"


# ---- render.yaml and render.worker.yaml ---------------------------------------------------

@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_every_service_has_the_fields_render_expects(path):
    names = [s.get("name") for s in services(path)]
    assert len(set(names)) == len(names), "service names must be unique"
    for svc in services(path):
        kind = svc.get("type")
        assert kind in SERVICE_TYPES and svc.get("name") and svc.get("runtime") == "docker", svc
        assert svc.get("dockerfilePath") == "./Dockerfile.ingest" and DOCKERFILE.is_file()
        assert svc.get("dockerContext") in (".", "./")
        assert isinstance(svc.get("dockerCommand"), str) and command_words(svc["dockerCommand"])
        disk = svc.get("disk")
        if disk is not None:
            assert kind in ("web", "pserv", "worker"), f"{svc['name']}: a {kind} can't have a disk"
            assert disk.get("name") and PurePosixPath(disk.get("mountPath", "")).is_absolute()
            assert isinstance(disk.get("sizeGB"), int) and disk["sizeGB"] > 0
        if "maxShutdownDelaySeconds" in svc:
            delay = svc["maxShutdownDelaySeconds"]
            assert kind in SHUTDOWN_DELAY_TYPES, \
                f"{svc['name']}: the spec has maxShutdownDelaySeconds for web, pserv and worker only, not {kind}"
            assert isinstance(delay, int) and 1 <= delay <= SHUTDOWN_DELAY_MAX, f"{svc['name']}: {delay!r}"
        flt = svc.get("buildFilter")
        if flt is not None:
            assert set(flt) <= {"paths", "ignoredPaths"}, flt
            for key in ("paths", "ignoredPaths"):  # a sync replaces both lists: always give both
                assert isinstance(flt.get(key), list) and all(isinstance(p, str) for p in flt[key]), \
                    f"{svc['name']}: buildFilter.{key} must be a list (the spec replaces what is left out)"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_plan_names_are_the_blueprint_specs(path):
    for svc in services(path):
        plan, kind = svc.get("plan"), svc["type"]
        allowed = PLANS | (BIG_PLANS if kind in BIG_PLAN_TYPES else set())
        assert plan in allowed, f"{svc['name']} ({kind}): plan {plan!r} is not one of {sorted(allowed)}"


def test_plan_names_are_spelled_with_spaces_everywhere():
    for path in (BLUEPRINT, WORKER_BLUEPRINT, GUIDE, DOCKERFILE):
        wrong = re.findall(r"\bpro[_-]?(?:plus|max|ultra)\b", path.read_text())
        assert not wrong, f"{path.name} spells {wrong}: the Blueprint spec writes `pro plus`, `pro max`, `pro ultra`"
    text = GUIDE.read_text()
    for plan in sorted(PLANS | BIG_PLANS):
        assert f"`{plan}`" in text, f"the guide should name the plan `{plan}`"


def test_cron_runs_every_five_minutes_without_a_disk():
    cron = service("cron")
    assert cron.get("schedule") == "*/5 * * * *"
    assert re.search(r'^\s*schedule:\s*(["\'])\*/5 \* \* \* \*\1\s*(#.*)?$', BLUEPRINT.read_text(), re.M), \
        "the schedule must be a quoted string"
    assert "disk" not in cron, "cron jobs can't have a disk"


def chroma_options() -> dict:
    """The options the Chroma service's command passes to `chroma run` (through deploy/chroma_server.sh)."""
    words = command_words(service("pserv")["dockerCommand"])
    assert words[0] == CHROMA_SERVER, words
    return dict(zip(words[1::2], words[2::2]))


def chroma_port() -> str:
    return chroma_options().get("--port", "")


def test_chroma_server_stores_on_its_disk():
    pserv = service("pserv")
    opts = chroma_options()
    assert opts.get("--host") == "0.0.0.0", "the server must listen on the private network"
    assert chroma_port().isdigit() and int(chroma_port()) not in RESERVED_PRIVATE_PORTS, \
        f"port {chroma_port()} can't be used on Render's private network"
    data, mount = PurePosixPath(opts["--path"]), PurePosixPath(pserv["disk"]["mountPath"])
    assert data == mount or mount in data.parents, f"--path {data} is not on the disk at {mount}"


def test_the_chroma_server_script_runs_chroma_with_its_options():
    """deploy/chroma_server.sh is in the image where the command names it, and becomes `chroma run` with the
    command's options (so the server gets Render's SIGTERM), the SQLite set-up started beside it."""
    script = image_to_repo(CHROMA_SERVER)
    assert script == ROOT / "deploy" / "chroma_server.sh" and script.is_file(), f"{CHROMA_SERVER} is not copied"
    assert script.stat().st_mode & stat.S_IXUSR, "deploy/chroma_server.sh must be executable"
    text = script.read_text()
    assert re.search(r'^exec chroma run "\$@"$', text, re.M), "the script must exec chroma run with its arguments"
    assert re.search(r'^python .*ingestion/storage/chroma_sqlite\.py" --wait "\$path/chroma\.sqlite3" &$', text, re.M)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0


def test_chroma_server_rebuilds_only_for_what_its_image_needs():
    """A service with a disk has no zero-downtime deploy: every rebuild of the Chroma service
    cuts the server from under a running cron job. Its buildFilter lists what `chroma run`
    depends on, so commits of transcripts, code or docs leave it alone."""
    pserv = service("pserv")
    flt = pserv.get("buildFilter")
    assert flt, "the Chroma service needs a buildFilter"
    assert set(flt["paths"]) == CHROMA_IMAGE_INPUTS, flt["paths"]
    for name in CHROMA_IMAGE_INPUTS:
        assert (ROOT / name).is_file(), name
        assert rebuilds_for(pserv, name), f"a change of {name} must rebuild the Chroma service"
    copied = {src for kw, args in final_stage() if kw == "COPY" and "from" not in copy_parts(args)[0]
              for src in copy_parts(args)[1]}
    assert "requirements.ingest.txt" in copied, "the filter's requirements file is the one the image installs"
    for path in IMAGE_INPUTS + NOT_IMAGE_INPUTS:
        if path not in CHROMA_IMAGE_INPUTS:
            assert not rebuilds_for(pserv, path), f"a commit of {path} would restart the Chroma server"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_services_that_run_the_code_rebuild_for_every_input_of_the_image(path):
    for svc in services(path):
        if not runs_scripts(svc):
            continue
        for name in IMAGE_INPUTS:
            assert rebuilds_for(svc, name), f"{svc['name']}: a commit of {name} would not reach it"
    worker = service("worker", WORKER_BLUEPRINT)
    assert worker.get("buildFilter"), "the worker should not restart for docs, tests or benchmarks"
    for name in NOT_IMAGE_INPUTS:
        assert not rebuilds_for(worker, name), f"a commit of {name} would restart the worker"


def test_cron_reaches_the_chroma_server_over_the_private_network():
    pserv, cron = service("pserv"), service("cron")
    env = env_vars(cron)
    assert env.get("CHROMA_HOST", {}).get("fromService") == {"name": pserv["name"], "type": "pserv",
                                                              "property": "host"}
    port = env.get("CHROMA_PORT", {})
    assert "fromService" not in port, \
        "CHROMA_PORT: what `property: port` gives before Render detects the port is undocumented"
    assert port.get("value") == chroma_port(), "CHROMA_PORT must be the literal --port of the server's command"
    assert cron.get("region") == pserv.get("region"), "the private network only joins one region"


def groups(path: Path) -> list[dict]:
    data = blueprint(path)
    found = list(data.get("envVarGroups") or [])
    for project in data.get("projects") or []:
        found += project.get("envVarGroups") or []
        for environment in project.get("environments") or []:
            found += environment.get("envVarGroups") or []
    return found


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_every_service_that_embeds_gets_the_key_from_the_group(path):
    """`sync: false` is prompted for only when a Blueprint is first created, and ignored in
    an environment group: a service added later would start without the key. So the key
    lives in a group made in the Dashboard, and every service that embeds names it."""
    for group in groups(path):
        assert group.get("name") != SECRET_GROUP, \
            f"{SECRET_GROUP} is made in the Dashboard: a Blueprint that declares it manages it"
        for entry in group.get("envVars") or []:
            assert entry.get("key") != "OPENAI_API_KEY", f"group {group.get('name')}: the key can't come from a Blueprint"
            assert "sync" not in entry, f"group {group.get('name')}: Render ignores sync: false in a group"
    for svc in services(path):
        linked = {e.get("fromGroup") for e in svc.get("envVars", []) if "fromGroup" in e}
        assert "OPENAI_API_KEY" not in env_vars(svc), \
            f"{svc['name']}: set the key in the group {SECRET_GROUP}, not on the service"
        embeds = set(runs_scripts(svc)) & EMBEDDING_SCRIPTS
        if embeds:
            assert SECRET_GROUP in linked, f"{svc['name']} runs {sorted(embeds)}: it needs fromGroup: {SECRET_GROUP}"
        else:
            assert SECRET_GROUP not in linked, f"{svc['name']} embeds nothing: it needs no API key"
    text = GUIDE.read_text()
    assert f"`{SECRET_GROUP}`" in text and f"- fromGroup: {SECRET_GROUP}" in text, \
        "the guide must say to create the group and how a service takes it"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_secrets_are_never_values(path):
    assert not re.search(r"sk-[A-Za-z0-9]", path.read_text()), "an API key in a Blueprint"
    entries = [(svc["name"], e) for svc in services(path) for e in svc.get("envVars", [])]
    entries += [(g.get("name"), e) for g in groups(path) for e in g.get("envVars") or []]
    for where, entry in entries:
        key = entry.get("key", "")
        if SECRET_KEY.search(key):
            assert "value" not in entry and "generateValue" not in entry, f"{where}: {key} must not be a value"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_environment_names_are_real_settings(path):
    known = {s.name for s in settings.SETTINGS} | IMAGE_SETTINGS
    for svc in services(path):
        for key, entry in env_vars(svc).items():
            assert key in known, f"{svc['name']}: {key} is read by nothing"
            if "value" in entry:
                assert isinstance(entry["value"], str), f"{svc['name']}: quote the value of {key}"


@pytest.mark.parametrize("path", [BLUEPRINT, WORKER_BLUEPRINT], ids=lambda p: p.name)
def test_shutdown_delay_covers_the_release_of_a_file(path):
    """On SIGTERM the worker forwards it to the file's process, which may be waiting for one
    embeddings request (OPENAI_TIMEOUT) before it can release its file; the worker waits
    GRACE_SECONDS for that, then kills it; Render waits maxShutdownDelaySeconds (default 30)
    for the container, then kills it. Each wait must cover the one inside it."""
    checked = 0
    for svc in services(path):
        if "process_queue_worker" not in runs_scripts(svc):
            continue
        checked += 1
        timeout = float(setting_value(svc, "OPENAI_TIMEOUT"))
        grace = float(setting_value(svc, "GRACE_SECONDS"))
        assert grace >= timeout + RELEASE_SECONDS, \
            f"{svc['name']}: GRACE_SECONDS {grace:g} must exceed OPENAI_TIMEOUT {timeout:g} + {RELEASE_SECONDS} s"
        if svc["type"] in SHUTDOWN_DELAY_TYPES:
            delay = svc.get("maxShutdownDelaySeconds")
            assert isinstance(delay, int), f"{svc['name']}: set maxShutdownDelaySeconds (Render's default is 30 s)"
            assert grace + EXIT_SECONDS <= delay <= SHUTDOWN_DELAY_MAX, \
                f"{svc['name']}: maxShutdownDelaySeconds {delay} must exceed GRACE_SECONDS {grace:g} + {EXIT_SECONDS} s"
        else:  # a cron job: the spec has no shutdown delay for it; the guide says what happens instead
            assert "maxShutdownDelaySeconds" not in svc, svc["name"]
    assert checked, f"{path.name}: no service runs the worker"


def test_single_worker_variant_keeps_its_state_on_its_disk():
    worker = service("worker", WORKER_BLUEPRINT)
    mount = PurePosixPath(worker["disk"]["mountPath"])
    env = env_vars(worker)
    for key in ("CHECKPOINT_DIR", "CHROMA_PATH"):
        assert mount in PurePosixPath(env[key]["value"]).parents, f"{key} must be on the disk"
    assert env["MAX_ITERATIONS"]["value"] == "0"
    assert "CHROMA_HOST" not in env, "this variant uses the embedded store"
    assert worker["plan"] in {"pro", "pro plus"} | BIG_PLANS, "the embedded index needs 4 GB or more"


def test_guide_shows_the_worker_variant_as_it_is_in_render_worker_yaml():
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert any(yaml.safe_load(b) == blueprint(WORKER_BLUEPRINT) for b in blocks), \
        "the guide's YAML snippet differs from render.worker.yaml"


def test_guide_shows_the_chroma_build_filter_as_it_is_in_render_yaml():
    flt = service("pserv")["buildFilter"]
    text = GUIDE.read_text()
    assert f"paths: [{', '.join(flt['paths'])}]" in text and f"ignoredPaths: {flt['ignoredPaths']}" in text


# ---- the commands -----------------------------------------------------------------------

def test_every_command_runs_a_script_that_exists():
    for where, command in all_commands():
        if command.startswith(CHROMA_SERVER):
            continue  # runs `chroma run` (test_the_chroma_server_script_runs_chroma_with_its_options)
        scripts, _ = command_scripts(shlex.split(command))
        assert scripts, f"{where}: expected `python ingestion/<script>.py` or a script of the image, got {command!r}"
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
                 "requirements.ingest.txt", "tests/fixtures/real", "deploy/worker_loop.sh"):
        assert f"`{name}`" in text and (ROOT / name).exists(), name


def test_guide_runs_no_script_in_the_chroma_services_shell():
    """The Chroma service's image is as old as its last build (buildFilter), and a shell's
    memory counts against the server's plan: the guide runs nothing there any more."""
    text = GUIDE.read_text()
    assert "CHROMA_HOST=localhost" not in text


# Messages the guide quotes, as the code writes them (format strings cut at placeholders).
QUOTED_MESSAGES = [
    "its process was killed (SIGKILL); requeued (a second kill splits it)", "parts, queued first",
    "cannot reach the Chroma server at", "the embeddings API refused the key (HTTP",
    "OPENAI_API_KEY is not set", "is not a folder", "already in the store", "files run (",
    "stale removed)", "peak RSS", "chunks checked; ", "shared store lease",
    "the embedded store holds about", "closest of ", "the store is empty: run the worker first",
    "the store kept failing", "is full (", "waiting for the embedded store",
]


@pytest.mark.parametrize("message", QUOTED_MESSAGES)
def test_guide_quotes_messages_the_code_prints(message):
    code = "".join(p.read_text() for p in sorted((ROOT / "ingestion").rglob("*.py")))
    assert message in GUIDE.read_text(), f"the guide no longer quotes {message!r}: update QUOTED_MESSAGES"
    assert message in code, f"the guide quotes {message!r}, which the code no longer prints"


def test_guide_quotes_what_the_loop_prints():
    for message in ("worker_loop: process_queue_worker.py exited",):
        assert message in GUIDE.read_text() and message.split(": ", 1)[1] in LOOP.read_text()


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

def test_worker_runs_the_loop_script_that_the_image_holds():
    """render.worker.yaml calls the loop by its path in the image; the Dockerfile copies it
    there and makes it executable; it cds to its parent's parent, which is where the image
    puts ingestion/, and the scripts it runs exist."""
    words = command_words(service("worker", WORKER_BLUEPRINT)["dockerCommand"])
    assert len(words) == 1 and PurePosixPath(words[0]).is_absolute(), \
        f"call the loop by its path alone (Render does not document how dockerCommand is split): {words}"
    in_image = PurePosixPath(words[0])
    assert image_to_repo(str(in_image)) == LOOP, f"the Dockerfile must copy deploy/worker_loop.sh to {in_image}"
    runs = " ".join(args for kw, args in final_stage() if kw == "RUN")
    assert re.search(rf"chmod (?:755|[ugoa]*\+x) {re.escape(str(in_image))}\b", runs), "the image must make it executable"
    assert f"sh -n {in_image}" in runs, "the build should check that the loop parses"
    assert LOOP.stat().st_mode & stat.S_IXUSR, "deploy/worker_loop.sh must be executable in the repository too"
    text = LOOP.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'cd "$(dirname "$0")/.."' in text, "the loop finds the project root from its own path"
    root = in_image.parent.parent
    workdir = PurePosixPath([args for kw, args in final_stage() if kw == "WORKDIR"][-1])
    assert root == workdir, f"the loop cds to {root}, the image's code is under {workdir}"
    assert image_to_repo(str(root / "ingestion") + "/") == ROOT / "ingestion/", "the image copies ingestion/ there"
    scripts = SCRIPT_CALL.findall(text)
    assert scripts == ["generate_file_queue", "process_queue_worker"], scripts
    for script in scripts:
        assert (LOOP.parent.parent / "ingestion" / f"{script}.py").is_file(), script
    assert subprocess.run(["sh", "-n", str(LOOP)], capture_output=True, timeout=30).returncode == 0


STUB_WORKER = """import signal, sys, time
def stop(signum, frame):
    open("released", "w").write(str(signum)); sys.exit(7)
signal.signal(signal.SIGTERM, stop)
open("running", "a").write("x")
time.sleep(SECONDS)
sys.exit(EXIT)
"""


def start_loop(tmp_path: Path, worker_seconds: float, pause: int = 300, worker_exit: int = 0) -> subprocess.Popen:
    """Run deploy/worker_loop.sh, copied into a project of stub scripts, as the worker would."""
    (tmp_path / "deploy").mkdir()
    loop = tmp_path / "deploy" / "worker_loop.sh"
    shutil.copy2(LOOP, loop)
    (tmp_path / "ingestion").mkdir()
    (tmp_path / "ingestion" / "generate_file_queue.py").write_text("open('generated', 'a').write('x')\n")
    (tmp_path / "ingestion" / "process_queue_worker.py").write_text(
        STUB_WORKER.replace("SECONDS", repr(worker_seconds)).replace("EXIT", str(worker_exit)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    # run from elsewhere: the loop finds its project from its own path. Its own process
    # group, so that cleanup() can end whatever a broken loop leaves behind.
    return subprocess.Popen([str(loop), str(pause)], cwd="/", env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cleanup(loop: subprocess.Popen) -> None:
    try:
        os.killpg(loop.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    loop.wait(timeout=10)


def wait_for(path: Path, seconds: float = 30, text: str | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or (text is not None and path.read_text() != text):
        assert time.monotonic() < deadline, f"{path.name} never appeared" + (f" with {text!r}" if text else "")
        time.sleep(0.05)


def sleeping_children(pid: int) -> list[int]:
    """The `sleep` processes whose parent is pid."""
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            argv = (stat_file.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and argv[0].endswith(b"sleep"):
            out.append(int(stat_file.parent.name))
    return out


def test_worker_loop_passes_sigterm_to_the_worker(tmp_path):
    loop = start_loop(tmp_path, worker_seconds=60)
    try:
        wait_for(tmp_path / "running")
        assert (tmp_path / "generated").exists(), "the loop refreshes the queue first"
        loop.send_signal(signal.SIGTERM)
        out, _ = loop.communicate(timeout=15)
    finally:
        cleanup(loop)
    assert (tmp_path / "released").read_text() == str(int(signal.SIGTERM)), "the worker never got SIGTERM"
    assert loop.returncode == 0, out
    assert "interrupted (exit 7: file released)" in out and "stopped by a signal" in out, out


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
        loop.communicate(timeout=15)
        deadline = time.monotonic() + 5  # (its sleep is signalled with it: gone within moments)
        while (left := [k for k in kids if Path(f"/proc/{k}").exists()]) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        cleanup(loop)
    assert not left, "the loop left its sleep running"
    assert loop.returncode == 0


def test_worker_loop_goes_on_after_a_failed_run(tmp_path):
    """A run that ends with an error (8: store busy, 4: API down, 5: key refused) is logged
    and tried again after the pause: the loop must not exit, or Render restarts it at once."""
    loop = start_loop(tmp_path, worker_seconds=0, pause=1, worker_exit=8)
    try:
        wait_for(tmp_path / "running", text="xx")
        assert (tmp_path / "generated").read_text() in ("xx", "xxx"), "each round refreshes the queue"
        assert loop.poll() is None, "the loop ended after a failed run"
        loop.send_signal(signal.SIGTERM)
        out, _ = loop.communicate(timeout=15)
    finally:
        cleanup(loop)
    assert "process_queue_worker.py exited 8" in out and "next try in 1s" in out, out


def test_worker_loop_refuses_a_bad_pause(tmp_path):
    result = subprocess.run(["sh", str(LOOP), "soon"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2 and "usage:" in result.stderr


# ---- the guide's defaults and the sizing table (issue 20) ----------------------------------

# Settings the guide writes with a value that is not the default, on purpose (`NAME=value`).
SET_BY_THE_GUIDE = {"MAX_ITERATIONS", "EMBEDDING_DIMENSIONS", "FILES_PER_CHILD", "WORKER_SHARD",
                    "MEMORY_LIMIT_MB", "CHILD_MAX_RSS_MB"}
# Defaults a reader of the guide needs; it must state each as "`NAME` (value".
DEFAULTS_THE_GUIDE_STATES = ["FILE_CONCURRENCY", "EMBED_BATCH_SIZE", "EMBED_CONCURRENCY", "GRACE_SECONDS",
                             "LEASE_SECONDS", "MAX_ATTEMPTS", "SPLIT_PARTS", "SPLIT_MIN_BYTES"]


def guide_default_claims() -> list[tuple[str, int, str]]:
    """(setting, value, the text) for every "`NAME` (N" and "`NAME=N`" in the guide; N in KB counts 1024."""
    text = GUIDE.read_text()
    claims = []
    for m in re.finditer(r"`([A-Z][A-Z0-9_]+)` \((\d[\d,]*)( KB)?", text):
        claims.append((m.group(1), int(m.group(2).replace(",", "")) * (1024 if m.group(3) else 1), m.group(0)))
    for m in re.finditer(r"`([A-Z][A-Z0-9_]+)=(\d+)`", text):
        if m.group(1) not in SET_BY_THE_GUIDE:
            claims.append((m.group(1), int(m.group(2)), m.group(0)))
    return [c for c in claims if c[0] in settings._BY_NAME]


def test_guide_states_the_code_defaults():
    """The guide once said EMBED_BATCH_SIZE (10) when the code's default was 16: every value it
    gives a setting as a default is the one ingestion/common/settings.py has."""
    claims = guide_default_claims()
    assert claims, "the guide states no default"
    for name, value, where in claims:
        default = settings._BY_NAME[name].default
        assert default is not None and int(default) == value, \
            f"the guide says {where!r}, but ingestion/common/settings.py's default for {name} is {default}"
    stated = {name for name, _, _ in claims}
    missing = [name for name in DEFAULTS_THE_GUIDE_STATES if name not in stated]
    assert not missing, f"the guide should state these defaults as `NAME` (value): {missing}"


def test_guide_says_how_many_files_the_worker_ingests_at_once():
    """The worker ingests FILE_CONCURRENCY files at once in forked children; one file at a time
    only where the platform cannot fork. A paragraph that says "one at a time" must say so."""
    paragraphs = GUIDE.read_text().split("\n\n")
    for para in paragraphs:
        for sentence in re.split(r"(?<=[.;:])\s+", " ".join(para.split())):
            if re.search(r"\bone (file )?at a time\b", sentence) and re.search(r"\b(ingest|files?)\b", sentence):
                assert "cannot fork" in sentence, f"the guide says files go one at a time: {sentence[:200]!r}"
    assert any("FILE_CONCURRENCY" in p and "fork" in p for p in paragraphs), \
        "the guide must say the worker forks FILE_CONCURRENCY children"


# What the sizing rests on (REFERENCE.md, "Chroma at the seed's scale", and the README's capacity
# table; measured on real transcripts and 1536-dimension vectors):
CHUNKS_PER_TRANSCRIPT = 62      # a real transcript gives ~62 chunks, one vector each
DISK_BYTES_PER_VECTOR = 21_200  # a 100,035-vector store took 2.12 GB (bench/scale.py, 1536 dims)
SERVER_GB = 0.13                # `chroma run` with an empty store: 131 MB
WORKER_SET_GB = 0.35            # variant B: the worker, its fork server and FILE_CONCURRENCY children
CRON_SET_GB = 0.315             # variant A: all the cron job's processes, whatever the store's size
FREE_SHARE = 0.25               # a quarter of the plan stays free (the worker warns at 75%)
DISK_SIZES = [5, 10, 20, 50, 100, 200]
DISK_MARGIN = 1.5
# Plan memory: REFERENCE.md (starter .. pro plus); pro max and pro ultra as Render's Workflows page
# gives them for instance types of those names (not confirmed for services; the guide says so).
PLAN_GB = {"starter": 0.5, "standard": 2, "pro": 4, "pro plus": 8, "pro max": 16, "pro ultra": 32}
SEED_TRANSCRIPTS = 10_000
SIZING_HEADER = "| Transcripts | Vectors"


def bytes_per_vector(dims: int) -> float:
    """The index's RAM a vector: the capacity plan's measured figures (4.4 bytes a dimension and the graph's
    share, which does not shrink with the dimensions), the one place they are kept."""
    from ingestion.run import capacity

    return capacity.index_bytes(1, dims)


INDEX_BYTES_PER_VECTOR_1536 = bytes_per_vector(1536)


def plan_for(need_gb: float) -> str:
    for plan, gb in sorted(PLAN_GB.items(), key=lambda kv: kv[1]):
        if need_gb <= gb * (1 - FREE_SHARE):
            return plan
    raise AssertionError(f"no plan holds {need_gb:.1f} GB")


def expected_row(transcripts: int) -> dict:
    vectors = transcripts * CHUNKS_PER_TRANSCRIPT
    index = {dims: vectors * bytes_per_vector(dims) / 1e9 for dims in (1536, 512)}
    disk = vectors * DISK_BYTES_PER_VECTOR / 1e9
    return {
        "vectors": vectors, "index": index, "disk": disk,
        "server": [plan_for(index[d] + SERVER_GB) for d in (1536, 512)],
        "cron": plan_for(CRON_SET_GB),
        "worker": [plan_for(index[d] + WORKER_SET_GB) for d in (1536, 512)],
        "sizeGB": next(s for s in DISK_SIZES if s >= disk * DISK_MARGIN),
    }


def sizing_table() -> dict[int, list[str]]:
    """The guide's sizing table: transcripts -> its cells."""
    lines = GUIDE.read_text().splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith(SIZING_HEADER)]
    assert len(start) == 1, "the guide must have one sizing table (section 10)"
    rows = {}
    for line in lines[start[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[int(re.match(r"[\d,]+", cells[0]).group().replace(",", ""))] = cells
    return rows


def gb(cell: str) -> float:
    return float(re.match(r"([\d.]+) GB$", cell).group(1))


def plans(cell: str) -> list[str]:
    return re.findall(r"`([a-z][a-z ]*)`", cell)


def test_guide_states_the_measurements_the_sizes_rest_on():
    text = GUIDE.read_text()
    for needle in (f"~{CHUNKS_PER_TRANSCRIPT} chunks", f"~{INDEX_BYTES_PER_VECTOR_1536 / 1000:.1f} KB a",
                   f"~{DISK_BYTES_PER_VECTOR // 1000} KB a vector", "measured at 100,000"):
        assert needle in text, f"the guide no longer says {needle!r}"


def test_guide_sizing_table_follows_from_the_measurements():
    rows = sizing_table()
    assert set(rows) == {1_000, SEED_TRANSCRIPTS, 50_000}, sorted(rows)
    for transcripts, cells in rows.items():
        want = expected_row(transcripts)
        vectors, idx1536, idx512, disk, server, cron, worker, size = cells[1:9]
        assert int(vectors.replace(",", "")) == want["vectors"], (transcripts, vectors)
        for cell, value in ((idx1536, want["index"][1536]), (idx512, want["index"][512]), (disk, want["disk"])):
            assert abs(gb(cell) - value) <= 0.05 * value + 0.005, (transcripts, cell, round(value, 2))
        assert plans(server) == want["server"], (transcripts, "transcripts-chroma", plans(server), want["server"])
        assert plans(cron) == [want["cron"]], (transcripts, "transcripts-ingest", plans(cron))
        assert plans(worker) == want["worker"], (transcripts, "transcripts-ingest-worker", plans(worker), want["worker"])
        assert int(size) == want["sizeGB"], (transcripts, size, want["sizeGB"])


def test_blueprints_are_sized_for_the_seed():
    """render.yaml and render.worker.yaml carry the guide's row for the seed at 1536 dimensions
    (the model's default): a plan that holds the index with a quarter free, and the disk."""
    want = expected_row(SEED_TRANSCRIPTS)
    row = sizing_table()[SEED_TRANSCRIPTS]
    for path in (BLUEPRINT, WORKER_BLUEPRINT):
        for svc in services(path):
            assert "EMBEDDING_DIMENSIONS" not in env_vars(svc), "the sizes below are for 1536 dimensions"
    pserv, cron, worker = service("pserv"), service("cron"), service("worker", WORKER_BLUEPRINT)
    assert pserv["plan"] == want["server"][0] == plans(row[5])[0], pserv["plan"]
    assert cron["plan"] == want["cron"], cron["plan"]
    assert worker["plan"] == want["worker"][0] == plans(row[7])[0], worker["plan"]
    for svc in (pserv, worker):
        assert svc["disk"]["sizeGB"] == want["sizeGB"] == int(row[8]), svc["disk"]["sizeGB"]
    text = GUIDE.read_text()
    assert f"| `transcripts-chroma` | `pserv`, `{pserv['plan']}` (" in text, "section 3's table names another plan"


def test_guide_shows_how_to_validate_and_check_the_blueprints():
    """What a check against Render's docs found missing: validating a Blueprint, logs and run
    history, snapshots, resizing, the private network's region and workspace, one-off jobs
    from the CLI, and a query as the end-to-end check."""
    text = GUIDE.read_text()
    for needle in ("render blueprints validate", "render blueprints validate render.worker.yaml",
                   "render jobs create", "--start-command", "cron_job_run_ended", "snapshot",
                   "same region *and* they belong to the same", "Disks page", "can't *decrease* it",
                   "ingestion/query_chromadb.py", "Did the first run work?"):
        assert needle in text, f"the guide no longer says {needle!r}"
    assert re.search(r"render jobs create \S+ --start-command \"run-as-ingest python ingestion/query_chromadb\.py \w+",
                     text), "the end-to-end check is a query from a one-off job"
