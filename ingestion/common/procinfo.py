"""This process and others: memory in use, whether a pid lives, the memory this machine or container has
(its cgroup, v1 or v2, nested or not), and the OOM kills of that cgroup."""
from __future__ import annotations

import os
import resource
from pathlib import Path

NO_LIMIT = 2**60  # a cgroup-v1 "no limit" is a number near 2**63


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (dead, not yet reaped by its parent) holds nothing
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def memory_groups(root: str | Path = "/") -> list[tuple[str, Path, Path]]:
    """This process's own memory cgroups, as (kind, its folder, the hierarchy's top folder):
    ("v2", ...) for the unified hierarchy, ("v1", ...) for a cgroup-v1 memory controller.

    Read from /proc/self/cgroup (the group's path) and /proc/self/mountinfo (where each
    hierarchy is mounted; /sys/fs/cgroup or /sys/fs/cgroup/memory when it says nothing).
    root: a folder standing for / (tests pass a fake tree)."""
    root = Path(root)
    own: dict[str, str] = {}  # "memory" (v1) or "" (v2) -> the group's path in its hierarchy
    try:
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(","):
                own[name] = path
    except (OSError, ValueError):
        return []
    mounts = {"v2": ("/", "/sys/fs/cgroup"), "v1": ("/", "/sys/fs/cgroup/memory")}
    found: dict[str, tuple[str, str]] = {}
    try:
        for line in (root / "proc/self/mountinfo").read_text().splitlines():
            fields, _, tail = line.partition(" - ")
            fields, tail = fields.split(), tail.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup2":
                found.setdefault("v2", (fields[3], fields[4]))
            elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
                found.setdefault("v1", (fields[3], fields[4]))
    except OSError:
        pass
    mounts.update(found)
    groups = []
    for kind, key in (("v2", ""), ("v1", "memory")):
        if key not in own:
            continue
        mount_root, mount_point = mounts[kind]
        top = root / mount_point.lstrip("/")
        path = own[key]
        if mount_root != "/" and (path + "/").startswith(mount_root.rstrip("/") + "/"):
            path = path[len(mount_root.rstrip("/")):]  # the mount shows only part of the hierarchy
        folder = top / path.lstrip("/")
        if not folder.is_dir():  # a container's view: its own group is the top of what it sees
            folder = top
        if folder.is_dir():
            groups.append((kind, folder, top))
    return groups


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # ("max": no limit)


def _count(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _up(folder: Path, top: Path):
    """folder, its parent, ... up to top (inclusive)."""
    while True:
        yield folder
        if folder == top or top not in folder.parents:
            return
        folder = folder.parent


def cgroup_limit_bytes(root: str | Path = "/") -> int | None:
    """The tightest memory limit over this process's cgroup and its parents (None: no limit)."""
    limits = []
    for kind, folder, top in memory_groups(root):
        name = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
        for d in _up(folder, top):
            value = _number(d / name)
            if value is not None and value < NO_LIMIT:
                limits.append(value)
    return min(limits) if limits else None


def memory_budget_bytes(root: str | Path = "/") -> int | None:
    """The memory this machine or container really has: its cgroup limit, else MemTotal (the smaller)."""
    total = None
    try:
        for line in (Path(root) / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    limit = cgroup_limit_bytes(root)
    return min(x for x in (limit, total) if x is not None) if (limit or total) else None


def oom_kills(root: str | Path = "/") -> int | None:
    """Processes of this process's cgroup killed for memory so far (None: not known here).
    v2: memory.events oom_kill; v1: memory.oom_control oom_kill; the nearest group that has the file."""
    for kind, folder, top in memory_groups(root):
        name, key = ("memory.events", "oom_kill") if kind == "v2" else ("memory.oom_control", "oom_kill")
        for d in _up(folder, top):
            value = _count(d / name, key)
            if value is not None:
                return value
    return None
