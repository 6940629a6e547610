"""The capacity plan: this process's real memory (cgroup v1/v2, nested), the dry run's projection, and an
embedded run that would outgrow the machine refused before anything is claimed or paid, proved under a
real cgroup memory limit (skipped where no memory group can be made: not root, no memory controller)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL, ROOT

from bench.capacity_plan import fill, index_ram, memory_group
from ingestion.common import procinfo
from ingestion.run import capacity
from ingestion.text import page_layout

MB = 2**20
REAL_BYTES = sum(p.stat().st_size for p in REAL)


# ---- procinfo: the memory this process really has ----------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


MEMINFO = "MemTotal:       8000000 kB\nMemFree:        1000 kB\n"


def test_procinfo_reads_a_nested_cgroup_v1_memory_group(tmp_path):
    root = _tree(tmp_path, {
        "proc/meminfo": MEMINFO,
        "proc/self/cgroup": "9:pids:/\n4:memory:/batch/job7\n1:cpu:/\n0::/\n",
        "proc/self/mountinfo": "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                               "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/batch/memory.limit_in_bytes": str(512 * MB),  # the tighter parent
        "sys/fs/cgroup/memory/batch/job7/memory.limit_in_bytes": str(700 * MB),
        "sys/fs/cgroup/memory/batch/job7/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        "sys/fs/cgroup/unified/cgroup.procs": "",
    })
    assert procinfo.memory_budget_bytes(root) == 512 * MB
    assert procinfo.oom_kills(root) == 3


def test_procinfo_reads_a_nested_cgroup_v2_group(tmp_path):
    root = _tree(tmp_path, {
        "proc/meminfo": MEMINFO,
        "proc/self/cgroup": "0::/user.slice/app.service\n",
        "proc/self/mountinfo": "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        "sys/fs/cgroup/cgroup.procs": "",
        "sys/fs/cgroup/user.slice/memory.max": str(1024 * MB),
        "sys/fs/cgroup/user.slice/app.service/memory.max": "max\n",
        "sys/fs/cgroup/user.slice/app.service/memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    })
    assert procinfo.memory_budget_bytes(root) == 1024 * MB
    assert procinfo.oom_kills(root) == 2
    # no limit anywhere: the machine's RAM; a limit above the RAM: the RAM
    (root / "sys/fs/cgroup/user.slice/memory.max").write_text("max\n")
    assert procinfo.memory_budget_bytes(root) == 8_000_000 * 1024
    (root / "sys/fs/cgroup/user.slice/memory.max").write_text(str(2**40))
    assert procinfo.memory_budget_bytes(root) == 8_000_000 * 1024


def test_procinfo_in_a_container_that_sees_only_its_own_group(tmp_path):
    # a v1 container without a cgroup namespace: the mount's root is the container's group
    root = _tree(tmp_path, {
        "proc/meminfo": MEMINFO,
        "proc/self/cgroup": "4:memory:/docker/abc\n",
        "proc/self/mountinfo": "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": str(300 * MB),
        "sys/fs/cgroup/memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    })
    assert procinfo.memory_budget_bytes(root) == 300 * MB
    assert procinfo.oom_kills(root) == 1


def test_procinfo_finds_a_v1_memory_controller_mounted_with_another(tmp_path):
    # some hosts mount memory together with another controller, under that pair's name: only mountinfo says where
    root = _tree(tmp_path, {
        "proc/meminfo": MEMINFO,
        "proc/self/cgroup": "3:cpuacct,memory:/job\n",
        "proc/self/mountinfo": "35 31 0:32 / /sys/fs/cgroup/cpuacct,memory rw - cgroup cgroup rw,cpuacct,memory\n",
        "sys/fs/cgroup/cpuacct,memory/job/memory.limit_in_bytes": str(200 * MB),
        "sys/fs/cgroup/cpuacct,memory/job/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
    })
    assert procinfo.memory_budget_bytes(root) == 200 * MB
    assert procinfo.oom_kills(root) == 5


def _probe(group=None) -> str:
    argv = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from ingestion.common import procinfo; "
            "print(procinfo.memory_budget_bytes(), procinfo.oom_kills())", str(ROOT)]
    out = (group.run(argv) if group else subprocess.run(argv, capture_output=True, text=True))
    assert out.returncode == 0, out.stderr
    budget, kills = out.stdout.split()
    return int(budget), kills


def test_procinfo_on_this_machine():
    mem_total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    budget, kills = _probe()
    assert 0 < budget <= mem_total
    with memory_group(f"test-capacity-probe-{os.getpid()}", 256 * MB) as group:
        if group is None:
            pytest.skip("no cgroup memory group can be made here (root and a memory controller needed)")
        budget, kills = _probe(group)  # a process in a nested group gets that group's limit
        assert budget == 256 * MB and kills == "0"


# ---- the dry run's projection, and the refusal ----------------------------------------------------
def test_dry_run_projects_the_store_at_the_end_of_the_queue(project):
    project.add_real()
    out = project.run("generate_file_queue.py", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "capacity plan: store after the queue: 123 vectors of 1536 dimensions (0 now + 123 from 2 pending " \
           "files, counted)" in out.stdout
    index = capacity.index_bytes(123, 1536) / MB
    worker = capacity.WORKER_BASE_BYTES / MB + index
    run = worker + (capacity.FORK_SERVER_BYTES + 2 * capacity.CHILD_BYTES) / MB  # (2 files: 2 children at most)
    assert f"index ~{index:,.0f} MB, worker ~{worker:,.0f} MB, whole run ~{run:,.0f} MB with 2 files at a time" \
        in out.stdout, out.stdout
    assert "the plan may use 90%: fits" in out.stdout
    assert project.api.stats()["requests"] == 0
    # the same queue at 512 dimensions: a third of the floats
    out = project.run("generate_file_queue.py", "--dry-run", EMBEDDING_DIMENSIONS="512")
    assert "123 vectors of 512 dimensions" in out.stdout


@pytest.fixture
def group_250():
    with memory_group(f"test-capacity-{os.getpid()}-{id(object())}", 250 * MB) as group:
        if group is None:
            pytest.skip("no cgroup memory group can be made here (root and a memory controller needed)")
        yield group


def _in(group, project, script, *args, **env):
    full = {**project.env, **{k: str(v) for k, v in env.items()}}
    return group.run([sys.executable, str(ROOT / "ingestion" / script), *args], env=full, cwd=project.root)


def test_a_queue_past_the_memory_is_refused_before_anything_is_claimed_or_paid(project, group_250):
    project.add_real()
    dry = _in(group_250, project, "generate_file_queue.py", "--dry-run")
    assert "this machine: memory 250 MB (cgroup limit)" in dry.stdout
    assert "does NOT fit: 0 of the 2 pending files fit" in dry.stdout and "ways out: " in dry.stdout
    out = _in(group_250, project, "process_queue_worker.py", MAX_ITERATIONS="0")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: capacity: after the 2 pending files"), out.stderr
    assert "250 MB this machine has (cgroup limit)" in lines[0] and "0 of them fit" in lines[0]
    assert "a machine or container with at least" in lines[0] and "CAPACITY_CHECK=warn" in lines[0]
    assert project.api.stats()["requests"] == 0
    q = project.queue
    assert len(q["pending"]) == 2 and not q["processing"] and not q["completed"]
    assert group_250.oom_kills() == 0


def test_capacity_check_warn_lets_a_person_who_knows_better_go_on(project):
    project.add_real()
    # the plan wants ~251 MB for these 2 files, 90% of 275 MB is 247: refused; the run itself peaks near 230 MB
    with memory_group(f"test-capacity-warn-{os.getpid()}-{id(project)}", 275 * MB) as group:
        if group is None:
            pytest.skip("no cgroup memory group can be made here (root and a memory controller needed)")
        refused = _in(group, project, "process_queue_worker.py", MAX_ITERATIONS="0")
        assert refused.returncode == 2 and "error: capacity:" in refused.stderr
        bad = _in(group, project, "process_queue_worker.py", CAPACITY_CHECK="maybe")
        assert bad.returncode == 2 and "CAPACITY_CHECK must be refuse or warn" in bad.stderr
        out = _in(group, project, "process_queue_worker.py", MAX_ITERATIONS="0", CAPACITY_CHECK="warn")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "CAPACITY_CHECK=warn: going on" in out.stderr
        assert len(project.chunks()) == 123 and group.oom_kills() == 0


# ---- proof under a real limit: the largest store the plan says fits runs without an OOM kill -------
def test_the_largest_store_that_fits_is_ingested_without_oom_kill_and_one_past_it_is_refused(project):
    """On the defaults (1536 dimensions, 4 files at a time), in a 350 MB group: a store pre-filled to the
    largest the plan says fits with the next two files is ingested without an OOM kill; two files more are
    refused before anything is claimed or paid."""
    limit, dims = 350 * MB, 1536
    project.add_real()
    project.ingest_all()  # a store of ours (outside the group): 123 vectors, the 2 files done
    # vectors the worker's plan will expect of the next two files (2 stored: estimated from their cleaned text)
    clean = sum(len(page_layout.clean(p.read_text()).text.encode()) for p in REAL)
    new = int(-(-REAL_BYTES // (capacity.CLEAN_BYTES_PER_CHUNK * REAL_BYTES / clean)))
    assert 123 <= new <= 1.3 * 123  # (it really makes 123: an estimate that errs towards more)
    most = capacity.most_vectors(limit, dims, 2)  # (2 pending files: 2 at a time)
    fill(project.chroma, most - 123 - new, text=False)  # the largest store the plan says fits
    assert index_ram(project.chroma, dims)[0] == most - new  # (reopened once, in a process of its own)
    for p in REAL:
        shutil.copy(p, project.add("b/" + p.name, ""))
    assert project.run("generate_file_queue.py").returncode == 0
    with memory_group(f"test-capacity-fit-{os.getpid()}-{id(project)}", limit) as group:
        if group is None:
            pytest.skip("no cgroup memory group can be made here (root and a memory controller needed)")
        dry = _in(group, project, "generate_file_queue.py", "--dry-run")
        assert "the plan may use 90%: fits" in dry.stdout, dry.stdout
        out = _in(group, project, "process_queue_worker.py", MAX_ITERATIONS="0")
        assert out.returncode == 0, out.stdout + out.stderr
        assert group.oom_kills() == 0, group.oom_control()
        print(f"{most - new + 123:,} vectors of {dims}: the group's peak {group.peak_bytes() / MB:.0f} MB of {limit / MB:.0f}")
        assert len(project.queue["completed"]) == 4
        stored = len(project.chunks())
        assert stored == most - new + 123  # the plan's projection, less its one chunk of overestimate
        # two more files: past what fits, refused before anything is claimed or paid
        for p in REAL:
            shutil.copy(p, project.add("c/" + p.name, ""))
        assert project.run("generate_file_queue.py").returncode == 0
        paid = project.api.stats()["requests"]
        out = _in(group, project, "process_queue_worker.py", MAX_ITERATIONS="0")
        assert out.returncode == 2 and out.stderr.startswith("error: capacity:"), out.stdout + out.stderr
        assert "0 of them fit" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert project.api.stats()["requests"] == paid and len(project.queue["pending"]) == 2
        assert len(project.chunks()) == stored and group.oom_kills() == 0


@pytest.mark.parametrize("kind", ["plain", "paginated", "plain-cleanup-off"])
def test_a_first_run_never_undercounts_the_vectors_its_files_will_make(project, monkeypatch, kind):
    """Before any file is stored, the plan estimates chunks from the share of text cleanup keeps in a sample of
    the pending files: plain transcripts (all of it) and paginated ones (under half) alike, never fewer
    vectors than the files really make (an undercount is an OOM kill days later), at most 30% more."""
    from bench.make_corpus import make_files
    from ingestion.common import settings

    paths = project.add_real() if kind == "paginated" else make_files(project.transcripts, 8, 60, seed=3)
    env = {"TEXT_CLEANUP": "off"} if kind.endswith("off") else {}
    dry = project.run("generate_file_queue.py", "--dry-run", **env)
    counted = int(re.search(r"tokens to embed in ([\d,]+) chunks", dry.stdout).group(1).replace(",", ""))
    for name, value in {**project.env, **env}.items():
        monkeypatch.setenv(name, value)
    per_chunk, how = capacity.bytes_per_chunk(settings.load(), {"processed_files": {}}, [str(p) for p in paths])
    estimate = sum(p.stat().st_size for p in paths) / per_chunk
    assert counted <= estimate <= 1.3 * counted, (counted, estimate, how)
